"""Shared fixtures and marker handling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_cluster = pytest.mark.skip(reason="needs a real Kubernetes cluster (set TRANSFERKIT_CLUSTER_TESTS=1)")
    has_gpu = _has_cuda()
    from transferkit.hardware import detect_cpu

    cpu = detect_cpu()
    skip_vnni = pytest.mark.skip(reason=f"needs VNNI/AMX; this CPU ({cpu.model}) has {cpu.int8_isa}")
    for item in items:
        if "vnni" in item.keywords and not cpu.exact_u8s8:
            item.add_marker(skip_vnni)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
        if "cluster" in item.keywords and not os.environ.get("TRANSFERKIT_CLUSTER_TESTS"):
            item.add_marker(skip_cluster)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models on shared cores: one intra-op thread is as fast and does not stall when cores are busy."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
