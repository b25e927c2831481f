"""The export sides of the built-in tasks, behind one interface.

:func:`load_task` asks the dataset's task (:meth:`transferkit.tasks.base.Task.export_side`) for its export
side: a :class:`TextTask` (tokenizer inputs, ``max_length``, padding trim, ``tokenizer/``) or an
:class:`ImageTask` (``pixel_values``, preprocessing from ``preprocessor.json``); the step
(:mod:`transferkit.export.step`) runs the same export, parity gate, quantization, accuracy gate, speed
measurement and ``io_spec.json`` for every task.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.data.prepared import PreparedDataset
from transferkit.errors import ExportError, ModelError
from transferkit.export.config import ExportConfig, ParityCase
from transferkit.export.io_spec import TensorSpec
from transferkit.io import write_json
from transferkit.tasks import get_task, model_task
from transferkit.tasks.image_classification import IMAGE_CLASSIFICATION
from transferkit.tasks.text_classification import TEXT_CLASSIFICATION

logger = logging.getLogger(__name__)

# Calibration batches hold this many rows (text: token ids; images: preprocessed pixels).
CALIBRATION_BATCH = 8


class _ExportTask:
    """What both tasks share: the loaded model (``exportable``), its labels and directory."""

    exportable: Any

    @property
    def labels(self) -> list[str]:
        """Label names, index = class id."""
        return self.exportable.labels

    @property
    def model_path(self) -> Path:
        """The resolved model directory."""
        return self.exportable.resolved.path

    def _sample(self, inputs: list[Any], pairs: list[str] | None, logits: dict[str, np.ndarray]) -> dict[str, Any]:
        """The ``agreement_sample.json`` content.

        Raw inputs as the server receives them, the fp32 graph's labels and logits, and every other variant's
        labels as computed here (the export node's CPU).
        """

        def names(values: np.ndarray) -> list[str]:
            return [self.labels[i] for i in values.argmax(axis=1)]

        return {"format_version": 1, "inputs": inputs, "pairs": pairs, "labels": names(logits["fp32"]),
                "logits": np.round(logits["fp32"].astype(np.float64), 6).tolist(),
                "variant_labels": {name: names(values) for name, values in logits.items() if name != "fp32"}}


class TextTask(_ExportTask):
    """A sequence classifier: token-id inputs, ``max_length``, padding trim, tokenizer files for serving."""

    task = TEXT_CLASSIFICATION
    item_unit = "seq"  # unit of the throughput measurement

    def __init__(self, exportable: Any, dataset: PreparedDataset, config: ExportConfig, max_length: int) -> None:
        self.exportable = exportable
        self.dataset = dataset
        self.config = config
        self.max_length = max_length
        self._val_texts = dataset.texts("validation")
        self._val_pairs = dataset.text_pairs("validation")
        # How long texts become windows (text_inputs.json of the trained model, at the export max_length).
        self.text_inputs = _text_inputs(exportable, max_length, self._val_pairs is not None, str(dataset.path))

    @property
    def model_type(self) -> str:
        """``bert``, ``roberta``, ``gpt2``..."""
        return self.exportable.model_type

    @property
    def input_shape(self) -> list[int]:
        """Shape of every graph input: dynamic batch and sequence."""
        return [-1, -1]

    def describe(self) -> str:
        """Short description for logs."""
        return f"{self.model_type}, inputs {self.exportable.input_names}, max_length {self.max_length}"

    def inputs(self) -> list[TensorSpec]:
        """Graph inputs for ``io_spec.json``."""
        return [TensorSpec(name, "int64", self.input_shape) for name in self.exportable.input_names]

    def export(self, path: Path, opset: int, target: str) -> dict[str, int]:
        """Write the fp32 graph and apply the text graph rewrites; return the rewrite counts."""
        import onnx

        from transferkit.export.onnx_export import export_onnx, keep_residual_adds_unfused, trim_trailing_padding

        export_onnx(self.exportable, self._trace_sample(), path, opset)
        graph = onnx.load(str(path))
        rewrites = {"trim_trailing_padding": int(trim_trailing_padding(graph, self.exportable.input_names))}
        if target == "cpu":
            rewrites["residual_add_as_sum"] = keep_residual_adds_unfused(graph)
        if any(rewrites.values()):
            onnx.save(graph, str(path))
        return rewrites

    def _trace_sample(self) -> dict[str, np.ndarray]:
        """Two real rows padded to a common length, with at least one padded position, for tracing."""
        from transferkit.export.runtime import encode

        exportable, texts, pairs = self.exportable, self._val_texts, self._val_pairs
        batch = [texts[i % len(texts)] for i in range(2)]
        batch_pairs = [pairs[i % len(pairs)] for i in range(2)] if pairs else None
        feeds = encode(exportable.tokenizer, batch, batch_pairs, exportable.input_names, self.max_length)
        if feeds["attention_mask"].all():
            longest = int(feeds["input_ids"].shape[1])
            feeds = encode(exportable.tokenizer, batch, batch_pairs, exportable.input_names,
                           min(longest + 4, self.max_length), padding="max_length")
        return feeds

    def parity(self, session: Any, atol: float) -> list[ParityCase]:
        """PyTorch vs ONNX Runtime on validation texts over several batch sizes and lengths."""
        from transferkit.export.parity import check_document_parity, check_parity

        exportable = self.exportable
        cases = check_parity(exportable.model, session, exportable.tokenizer, self._val_texts, self._val_pairs,
                             exportable.input_names, self.max_length, atol)
        if self.text_inputs is not None and not self.text_inputs.plain:
            cases.append(check_document_parity(exportable.model, session, exportable.tokenizer, self._val_texts,
                                               exportable.input_names, self.text_inputs, atol))
        return cases

    def qdq_options(self, target: str) -> dict[str, Any]:
        """``quantize_onnx`` options of static QDQ: symmetric int8 on the matrix products (TensorRT layout)."""
        return {}

    def calibration_feeds(self) -> list[dict[str, np.ndarray]]:
        """The first ``calibration_size`` training rows, tokenized in batches."""
        from transferkit.export.runtime import encode

        size = self.config.calibration_size
        texts = self.dataset.texts("train")[:size]
        pairs = self.dataset.text_pairs("train")
        pairs = pairs[:size] if pairs is not None else None
        feeds = []
        for start in range(0, len(texts), CALIBRATION_BATCH):
            chunk_pairs = pairs[start : start + CALIBRATION_BATCH] if pairs is not None else None
            feeds.append(encode(self.exportable.tokenizer, texts[start : start + CALIBRATION_BATCH], chunk_pairs,
                                self.exportable.input_names, self.max_length))
        return feeds

    def test_labels(self) -> np.ndarray:
        """Label ids of the accuracy-gate rows."""
        return np.asarray(self.dataset.label_ids("test")[: self.config.max_eval_samples])

    def test_logits(self, session: Any) -> np.ndarray:
        """Logits of ``session`` on the accuracy-gate rows (batched by length)."""
        from transferkit.export.runtime import predict_logits

        cap = self.config.max_eval_samples
        texts, pairs = self.dataset.texts("test")[:cap], self.dataset.text_pairs("test")
        pairs = pairs[:cap] if pairs is not None else None
        return predict_logits(session, self.exportable.tokenizer, texts, pairs, self.exportable.input_names,
                              self.max_length, self.config.eval_batch_size, self.text_inputs)

    def agreement_sample(self, sessions: dict[str, Any], size: int) -> dict[str, Any]:
        """The first ``size`` validation texts (and pairs) with each session's labels (``fp32`` first)."""
        from transferkit.export.runtime import predict_logits

        texts = self._val_texts[:size]
        pairs = self._val_pairs[:size] if self._val_pairs is not None else None
        logits = {name: predict_logits(session, self.exportable.tokenizer, texts, pairs, self.exportable.input_names,
                                       self.max_length, self.config.eval_batch_size, self.text_inputs) if texts
                  else np.zeros((0, len(self.labels)), dtype=np.float32) for name, session in sessions.items()}
        return self._sample(list(texts), list(pairs) if pairs is not None else None, logits)

    def speed_feeds(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Batch-1 and batch-N feeds of validation rows, every input padded to ``max_length``."""
        from transferkit.export.runtime import encode

        n, texts, pairs = self.config.throughput_batch_size, self._val_texts, self._val_pairs
        rows = [texts[i % len(texts)] for i in range(n)]
        row_pairs = [pairs[i % len(pairs)] for i in range(n)] if pairs else None
        feeds_bn = encode(self.exportable.tokenizer, rows, row_pairs, self.exportable.input_names, self.max_length,
                          padding="max_length")
        return {k: v[:1] for k, v in feeds_bn.items()}, feeds_bn

    def speed_note(self) -> str:
        """How the speed inputs were built (report)."""
        return f"inputs padded to {self.max_length} tokens"

    def write_assets(self, directory: Path) -> dict[str, Any]:
        """Write ``tokenizer/``; return the ``io_spec.json`` fields that describe preprocessing."""
        tokenizer_dir = directory / "tokenizer"
        tokenizer_dir.mkdir()
        tokenizer_files = self._tokenizer_files(tokenizer_dir)
        tokenizer = self.exportable.tokenizer
        preprocessing = {
            "kind": "tokenizer",
            "tokenizer_class": type(tokenizer).__name__,
            "model_input_names": list(self.exportable.input_names),
            "truncation": True,
            "max_length": self.max_length,
            "padding": "longest",
            "padding_side": tokenizer.padding_side,
            "pad_token": str(tokenizer.pad_token),
            "pad_token_id": int(tokenizer.pad_token_id),
            "text_pair": self.dataset.has_text_pair,
            "postprocessing": "softmax(logits) for probabilities; argmax indexes labels",
        }
        if self.text_inputs is not None:
            preprocessing["text_inputs"] = self.text_inputs.to_dict()
        return {"tokenizer_dir": "tokenizer", "tokenizer_files": tokenizer_files, "max_length": self.max_length,
                "preprocessing": preprocessing,
                "text_inputs": self.text_inputs.to_dict() if self.text_inputs is not None else {}}

    def _tokenizer_files(self, directory: Path) -> list[str]:
        """Save the tokenizer with truncation/padding set, so ``tokenizer.json`` alone reproduces preprocessing."""
        tokenizer = self.exportable.tokenizer
        backend = tokenizer.backend_tokenizer
        backend.enable_truncation(max_length=self.max_length)
        backend.enable_padding(pad_id=int(tokenizer.pad_token_id), pad_token=str(tokenizer.pad_token),
                               direction=tokenizer.padding_side)
        try:
            tokenizer.save_pretrained(str(directory))
        finally:
            backend.no_truncation()
            backend.no_padding()
        files = sorted(p.name for p in directory.iterdir() if p.is_file())
        if "tokenizer.json" not in files:
            raise ExportError(f"{self.model_path}: the tokenizer did not save a tokenizer.json")
        return files


def _text_inputs(exportable: Any, max_length: int, pairs: bool, where: str) -> Any:
    """The model's ``text_inputs.json`` at the export ``max_length`` (None for a model trained without one)."""
    import dataclasses

    from transferkit.data.long_text import check_long_document_options, read_text_inputs

    spec = read_text_inputs(exportable.resolved.path)
    if spec is None:
        return None
    spec = dataclasses.replace(spec, max_length=max_length).check()
    check_long_document_options(spec, pairs=pairs, where=where)
    return spec


class ImageTask(_ExportTask):
    """An image classifier: ``pixel_values`` float32 ``[batch, 3, S, S]``, preprocessing from ``preprocessor.json``.

    Images are preprocessed once with the model's evaluation transform: validation images for tracing, the
    parity gate and the speed measurement, the first ``calibration_size`` training images for static QDQ
    calibration, test images (up to ``max_eval_samples``) for the accuracy gate.
    """

    task = IMAGE_CLASSIFICATION
    item_unit = "img"
    max_length = None

    def __init__(self, exportable: Any, dataset: PreparedDataset, config: ExportConfig) -> None:
        self.exportable = exportable
        self.dataset = dataset
        self.config = config
        self._pixels: dict[str, np.ndarray] = {}

    @property
    def model_type(self) -> str:
        """``efficientnet-lite0`` or the transformers ``model_type`` (``resnet``, ``vit``...)."""
        return self.exportable.model_type

    @property
    def input_shape(self) -> list[int]:
        """``[-1, 3, S, S]``: dynamic batch, fixed image size."""
        return self.exportable.input_shape

    def describe(self) -> str:
        """Short description for logs."""
        return f"{self.model_type}, input pixel_values {self.input_shape}"

    def inputs(self) -> list[TensorSpec]:
        """Graph inputs for ``io_spec.json``."""
        from transferkit.export.image import PIXEL_VALUES

        return [TensorSpec(PIXEL_VALUES, "float32", self.input_shape)]

    def pixels(self, split: str, limit: int | None = None) -> np.ndarray:
        """Preprocessed images of a split (at most ``limit``), computed once per split and limit."""
        from transferkit.export.image import preprocess_images

        key = f"{split}:{limit}"
        if key not in self._pixels:
            images = self.dataset.images(split)[:limit]
            self._pixels[key] = preprocess_images(self.exportable.preprocessor, images,
                                                  str(self.dataset.path / f"{split}.parquet"))
        return self._pixels[key]

    def export(self, path: Path, opset: int, target: str) -> dict[str, int]:
        """Write the fp32 graph (traced on two validation images); CNN graphs get no rewrites.

        Every image the step uses is preprocessed first, so an undecodable one fails before any export work.
        """
        from transferkit.export.image import export_image_onnx

        self.pixels("test", self.config.max_eval_samples)
        self.pixels("train", self.config.calibration_size)
        validation = self.pixels("validation")
        export_image_onnx(self.exportable, validation[np.arange(2) % len(validation)], path, opset)
        return {}

    def parity(self, session: Any, atol: float) -> list[ParityCase]:
        """PyTorch vs ONNX Runtime on validation images over several batch sizes."""
        from transferkit.export.parity import check_image_parity

        return check_image_parity(self.exportable.model, session, self.pixels("validation"), atol)

    def qdq_options(self, target: str) -> dict[str, Any]:
        """Static QDQ of every supported op but the stem; uint8 activations on cpu, symmetric int8 on gpu."""
        return {"op_types": None, "symmetric_activations": target == "gpu", "keep_input_layers_float": True}

    def calibration_feeds(self) -> list[dict[str, np.ndarray]]:
        """The first ``calibration_size`` training images, preprocessed, in batches."""
        from transferkit.export.image import PIXEL_VALUES

        pixels = self.pixels("train", self.config.calibration_size)
        return [{PIXEL_VALUES: pixels[start : start + CALIBRATION_BATCH]}
                for start in range(0, len(pixels), CALIBRATION_BATCH)]

    def test_labels(self) -> np.ndarray:
        """Label ids of the accuracy-gate images."""
        return np.asarray(self.dataset.label_ids("test")[: self.config.max_eval_samples])

    def test_logits(self, session: Any) -> np.ndarray:
        """Logits of ``session`` on the accuracy-gate images."""
        from transferkit.export.runtime import predict_image_logits

        return predict_image_logits(session, self.pixels("test", self.config.max_eval_samples),
                                    self.config.eval_batch_size)

    def agreement_sample(self, sessions: dict[str, Any], size: int) -> dict[str, Any]:
        """The first ``size`` validation images (base64 of the stored bytes) with each session's labels."""
        import base64

        from transferkit.export.runtime import predict_image_logits

        images = self.dataset.images("validation")[:size]
        pixels = self.pixels("validation")[: len(images)]
        logits = {name: predict_image_logits(session, pixels, self.config.eval_batch_size) if images
                  else np.zeros((0, len(self.labels)), dtype=np.float32) for name, session in sessions.items()}
        return self._sample([base64.b64encode(data).decode("ascii") for data in images], None, logits)

    def speed_feeds(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Batch-1 and batch-N feeds of preprocessed validation images."""
        from transferkit.export.image import PIXEL_VALUES

        validation = self.pixels("validation")
        rows = np.arange(self.config.throughput_batch_size) % len(validation)
        batch = np.ascontiguousarray(validation[rows])
        return {PIXEL_VALUES: batch[:1]}, {PIXEL_VALUES: batch}

    def speed_note(self) -> str:
        """How the speed inputs were built (report)."""
        size = self.exportable.image_size
        return f"preprocessed {size}x{size} validation images (preprocessing not timed)"

    def write_assets(self, directory: Path) -> dict[str, Any]:
        """Write ``preprocessor.json``; return the ``io_spec.json`` fields that describe preprocessing."""
        from transferkit.data.transforms import PREPROCESSOR_FILE

        preprocessing = self.exportable.preprocessor.config.to_dict()
        write_json(directory / PREPROCESSOR_FILE, preprocessing)
        return {"tokenizer_dir": None, "tokenizer_files": [], "max_length": None, "preprocessing": preprocessing}


def load_task(config: ExportConfig, dataset: PreparedDataset) -> Any:
    """Load the model for export and wrap it with the export side of the dataset's task.

    Raises:
        ModelError: A model of another task than the dataset's, or a model that does not load.
        ExportError: Unsupported architecture or labels that differ from the dataset's.
        ConfigError: An image model without usable preprocessing settings.

    """
    task = get_task(dataset)
    owner = model_task(config.model_dir)
    if owner is not None and owner is not task:
        raise ModelError(
            f"{config.model_dir}: {owner.classifier_noun}, but {dataset.path / 'schema.json'} is for "
            f"{dataset.task}; export with the prepared dataset the model was trained on"
        )
    return task.export_side(config, dataset)
