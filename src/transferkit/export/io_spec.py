"""``io_spec.json``: the contract between the export step and the serving step.

The export step writes it next to the ONNX graphs; the Triton repository builder reads it to name
inputs/outputs, pick the graph variant and set up preprocessing. Layout of an export directory::

    model.onnx            fp32 graph (always present)
    model.int8.onnx       dynamic int8 (target cpu), when kept by the accuracy gate
    model.qdq.onnx        static QDQ int8 (target gpu; image models on target cpu too), when kept
    model.fp16.onnx       fp16 (target gpu), when kept
    io_spec.json          this file
    agreement_sample.json validation inputs with the fp32 graph's labels and logits: the deploy step sends them
                          through the served model and rolls back when too few labels agree
    labels.json           label names, index = class id
    tokenizer/            tokenizer files (text models)
    preprocessor.json     image preprocessing settings (image models; the same dict as ``preprocessing``)

Text models (``task`` ``text-classification``) have int64 ``[-1, -1]`` token inputs, ``tokenizer_dir``
``tokenizer`` and ``preprocessing.kind`` ``tokenizer``. Image models (``image-classification``) have one input
``pixel_values`` float32 ``[-1, 3, S, S]``, ``tokenizer_dir`` None, no ``tokenizer_files``, ``max_length``
None and ``preprocessing`` = ``ImagePreprocessConfig.to_dict()`` (``kind`` ``image``: decode, resize,
centre-crop to ``image_size``, rescale, normalise).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import ExportError
from transferkit.io import write_json

IO_SPEC_FILE = "io_spec.json"
AGREEMENT_SAMPLE_FILE = "agreement_sample.json"
IO_SPEC_VERSION = 1
VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "qdq": "model.qdq.onnx", "fp16": "model.fp16.onnx"}


@dataclass
class TensorSpec:
    """One named graph input or output. ``dims`` use -1 for dynamic axes (batch first)."""

    name: str
    dtype: str  # numpy dtype name: int64, float32, float16, string
    dims: list[int]


@dataclass
class VariantSpec:
    """One ONNX graph variant in the export directory."""

    file: str
    precision: str  # fp32, int8, qdq-int8, fp16
    size_bytes: int
    primary_metric: float | None = None
    # Optional additions (export issue 5); older files load with the defaults.
    primary_metric_drop_pt: float | None = None  # fp32 metric minus this variant's, in points
    providers: list[str] = field(default_factory=list)  # ONNX Runtime execution providers it is meant for


@dataclass
class IOSpec:
    """Everything a server needs to run the exported model."""

    task: str
    model_type: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str]
    max_length: int | None
    opset: int
    variants: dict[str, VariantSpec]
    recommended_variant: str
    tokenizer_dir: str | None = "tokenizer"
    tokenizer_files: list[str] = field(default_factory=list)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    format_version: int = IO_SPEC_VERSION
    target: str = "cpu"  # export target the variants were built for: cpu or gpu
    primary_metric_name: str = "accuracy"  # what VariantSpec.primary_metric measures (test split)
    # Where the gates ran (transferkit.hardware.CpuInfo) and how CPU int8 graphs were quantized
    # (transferkit.export.int8.Int8Recipe: its serving_node_labels say which nodes may serve them).
    export_cpu: dict[str, Any] = field(default_factory=dict)
    int8_recipe: dict[str, Any] = field(default_factory=dict)
    # Text models: how long texts become inputs (transferkit.data.long_text.TextInputs.to_dict(): max_length,
    # truncation head|tail|head_tail, long_documents truncate|chunk, stride, aggregation mean|max,
    # special_tokens). Chunk: the server splits a text into windows and returns ONE row of logits per text,
    # aggregated over its windows. Empty: head truncation at max_length (older exports).
    text_inputs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.recommended_variant not in self.variants:
            raise ExportError(
                f"io_spec: recommended_variant {self.recommended_variant!r} not among {sorted(self.variants)}"
            )
        if not self.inputs or not self.outputs:
            raise ExportError("io_spec: at least one input and one output are required")

    @property
    def recommended_file(self) -> str:
        """File name of the recommended graph variant."""
        return self.variants[self.recommended_variant].file

    def save(self, directory: str | Path) -> Path:
        """Write ``io_spec.json`` into ``directory``."""
        return write_json(Path(directory) / IO_SPEC_FILE, asdict(self))

    @classmethod
    def load(cls, directory: str | Path) -> IOSpec:
        """Read ``io_spec.json`` from an export directory.

        Raises:
            ExportError: The file is missing or malformed.
        """
        path = Path(directory) / IO_SPEC_FILE
        if not path.is_file():
            raise ExportError(f"{path}: missing (not an export directory from `transferkit export`)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            raw["inputs"] = [TensorSpec(**t) for t in raw["inputs"]]
            raw["outputs"] = [TensorSpec(**t) for t in raw["outputs"]]
            raw["variants"] = {k: VariantSpec(**v) for k, v in raw["variants"].items()}
            return cls(**raw)
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ExportError(f"{path}: malformed io_spec ({type(exc).__name__}: {exc})") from exc
