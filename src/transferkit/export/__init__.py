"""ONNX export with a parity gate, and quantization with an accuracy gate.

Entry points: :func:`export_model` (the whole step), :func:`quantize_onnx` (one variant of any ONNX file),
:func:`check_parity` (PyTorch vs ONNX Runtime). Heavy libraries are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transferkit.export.config import ExportConfig, ExportResult, ParityCase, VariantResult
from transferkit.export.io_spec import IOSpec

if TYPE_CHECKING:
    from transferkit.export.parity import check_parity
    from transferkit.export.quantize import quantize_onnx
    from transferkit.export.step import export_model

__all__ = ["ExportConfig", "ExportResult", "IOSpec", "ParityCase", "VariantResult", "check_parity", "export_model",
           "quantize_onnx"]

_LAZY = {"export_model": "transferkit.export.step", "quantize_onnx": "transferkit.export.quantize",
         "check_parity": "transferkit.export.parity"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'transferkit.export' has no attribute {name!r}")
