"""`transferkit train` (implemented by issue 3)."""

from __future__ import annotations

from transferkit.cli._common import not_implemented


def train() -> None:
    """Not implemented yet."""
    not_implemented("train", 3)
