"""Fetch and cache the offline assets that ``make setup`` prepares (idempotent).

Run as ``python -m transferkit.setup_assets``. Each step is cached under ``$TRANSFERKIT_CACHE``; a
second run only checks that the caches exist.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from transferkit.errors import TransferkitError
from transferkit.log import configure_logging

logger = logging.getLogger("transferkit.setup")


def _builtin_datasets() -> None:
    from transferkit.data.builtin import BUILTINS, load_builtin
    from transferkit.errors import AssetError

    for name, dataset in BUILTINS.items():
        try:
            load_builtin(f"builtin:{name}")
        except AssetError as exc:
            if dataset.system_package is None:
                raise
            # Data from a system package is optional: setup never installs system packages.
            logger.warning("setup: skipping builtin:%s: %s", name, exc)


def _base_models() -> None:
    from transferkit.models.catalog import resolve_model

    # Both are pinned registry packages: resolving checks that their files are in place (nothing is fetched).
    resolve_model("minilm-l6")
    resolve_model("efficientnet-lite0")


def _smollm2() -> None:
    from transferkit.models.gguf import prepare_smollm2

    prepare_smollm2()


def _local_triton() -> None:
    from transferkit.serve.install import install_triton

    install_triton()


STEPS: list[tuple[str, Callable[[], None]]] = [
    ("built-in datasets", _builtin_datasets),
    ("base models", _base_models),
    ("smollm2-135m (GGUF converted once to fp32 safetensors)", _smollm2),
    ("local Triton server", _local_triton),
]


def main() -> int:
    """Run every setup step; return a process exit code."""
    configure_logging()
    for label, step in STEPS:
        try:
            step()
        except TransferkitError as exc:
            logger.error("setup: %s: %s", label, exc)
            return 2
        logger.info("setup: %s ready", label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
