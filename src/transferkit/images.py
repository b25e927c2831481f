"""Container image references: the one place that sets image names and the tag (the package version)."""

from __future__ import annotations

import os

from transferkit import __version__

REGISTRY = os.environ.get("TRANSFERKIT_IMAGE_REGISTRY", "ghcr.io/transferkit")
TAG = __version__

RUNTIME_IMAGE = f"{REGISTRY}/runtime:{TAG}"
RUNTIME_CUDA_IMAGE = f"{REGISTRY}/runtime-cuda:{TAG}"
TRITON_IMAGE = f"{REGISTRY}/triton:{TAG}"
