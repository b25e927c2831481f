"""`transferkit forgetting` (implemented by issue 4)."""

from __future__ import annotations

from transferkit.cli._common import not_implemented


def forgetting() -> None:
    """Not implemented yet."""
    not_implemented("forgetting", 4)
