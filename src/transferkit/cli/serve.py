"""`transferkit serve` (implemented by issue 6)."""

from __future__ import annotations

from transferkit.cli._common import not_implemented


def serve() -> None:
    """Not implemented yet."""
    not_implemented("serve", 6)
