"""`transferkit export` (implemented by issue 5)."""

from __future__ import annotations

from transferkit.cli._common import not_implemented


def export() -> None:
    """Not implemented yet."""
    not_implemented("export", 5)
