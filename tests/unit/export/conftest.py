"""Shared, session-scoped inputs for export tests: one movie slice, one fitted MiniLM, its outlier twin."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_movie_slice
from tests.unit.export import models


@pytest.fixture(scope="session")
def movie_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_movie_slice(tmp_path_factory.mktemp("export-data") / "movie", train=48, validation=16, test=32)


@pytest.fixture(scope="session")
def minilm_dir(movie_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.fitted_minilm(movie_dir, tmp_path_factory.mktemp("export-models") / "minilm")


@pytest.fixture(scope="session")
def outlier_dir(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.with_activation_outlier(minilm_dir, tmp_path_factory.mktemp("export-models") / "minilm-outlier")


def quick(**overrides):
    """Export options that keep tests fast: short sequences, few timing runs, 2 threads."""
    options = {"max_length": 32, "threads": 2, "latency_runs": 3, "throughput_runs": 1, "throughput_batch_size": 8}
    options.update(overrides)
    return options
