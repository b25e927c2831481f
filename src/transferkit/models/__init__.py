"""Model catalog and safe loading."""

from transferkit.models.catalog import CATALOG, CatalogEntry, ResolvedModel, get_entry, resolve_model

__all__ = ["CATALOG", "CatalogEntry", "ResolvedModel", "get_entry", "resolve_model"]
