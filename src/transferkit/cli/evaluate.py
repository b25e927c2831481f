"""`transferkit evaluate` (implemented by issue 4)."""

from __future__ import annotations

from transferkit.cli._common import not_implemented


def evaluate() -> None:
    """Not implemented yet."""
    not_implemented("evaluate", 4)
