"""Logging setup shared by the CLI and components (the library itself only calls ``getLogger``)."""

from __future__ import annotations

import logging
import os

from rich.console import Console
from rich.logging import RichHandler


def configure_logging(verbose: bool = False) -> None:
    """Route library logs to stderr through rich, keeping stdout clean for JSON output.

    ``TRANSFERKIT_LOG_LEVEL`` overrides the level.
    """
    level = os.environ.get("TRANSFERKIT_LOG_LEVEL", "DEBUG" if verbose else "INFO").upper()
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False, markup=False)],
        force=True,
    )
    for noisy in ("urllib3", "botocore", "boto3", "filelock", "matplotlib", "PIL", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
