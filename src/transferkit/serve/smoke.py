"""Smoke test of a freshly loaded model version against ONNX Runtime run in-process.

Text models: fixed sentences go through the served ensemble (raw strings in) and through the exported
graph with the exported tokenizer in this process. Image models: encoded images (real ones from a
prepared dataset's test split, else a few generated ones covering grey, RGB, RGBA, 16-bit and JPEG) go
through the served ensemble (bytes in, decoded by the ``_preprocess`` model) and through the exported
graph after transferkit's reference ``ImagePreprocessor`` in this process, so the check also covers the
served preprocessing. Logits must agree within a tolerance and the served labels must equal the
in-process arg-max wherever the in-process margin is larger than that tolerance (a near-tie may flip
legitimately: dynamic int8 quantisation depends on the batch it sees).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.data.long_text import TextInputs, aggregate, window_ids
from transferkit.errors import ConfigError, TransferkitError
from transferkit.serve.control import TritonControl
from transferkit.serve.repository import ExportedModel

logger = logging.getLogger(__name__)

DEFAULT_SMOKE_TEXTS = (
    "An absolute delight from start to finish.",
    "A tedious, badly written mess.",
    "ok",
    "The first half drags, but the ending is moving and the performances are excellent throughout the film.",
)


@dataclass
class SmokeResult:
    """Outcome of a smoke test."""

    passed: bool
    inputs: int
    max_abs_diff: float
    tolerance: float
    labels: list[str] = field(default_factory=list)
    expected_labels: list[str] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return asdict(self)


def default_tolerance(exported: ExportedModel, reference: np.ndarray | None = None) -> float:
    """Logit tolerance by precision: int8 graphs quantise activations per batch, fp16 rounds.

    Dynamic int8 picks activation scales from each batch, so the server's padding and batching move the
    logits by a few percent of their scale; a broken deployment (wrong tokenizer or input mapping) moves
    them by the order of the logits themselves. Hence int8 uses 10% of the largest reference logit,
    at least 0.1.
    """
    precision = exported.spec.variants[exported.variant].precision
    if "int8" in precision:
        scale = float(np.max(np.abs(reference))) if reference is not None and reference.size else 0.0
        return max(0.1, 0.1 * scale)
    if precision == "fp16":
        return 1e-2
    return 1e-3


def _session(exported: ExportedModel, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(exported.onnx_path), sess_options=options, providers=["CPUExecutionProvider"])


def reference_logits(exported: ExportedModel, texts: list[str], *, pairs: list[str] | None = None,
                     threads: int = 1) -> np.ndarray:
    """Logits of the exported graph in-process, one input per run (tokenised like the server)."""
    from tokenizers import Tokenizer

    if exported.tokenizer_dir is None:
        raise ValueError("reference_logits needs a text model with a tokenizer")
    tokenizer = Tokenizer.from_file(str(exported.tokenizer_dir / "tokenizer.json"))
    tokenizer.no_padding()
    session = _session(exported, threads)
    if exported.spec.text_inputs and pairs is None:
        spec = TextInputs.from_dict(exported.spec.text_inputs)
        if not spec.plain:
            return _document_logits(exported, tokenizer, session, texts, spec)
    if exported.spec.max_length:
        tokenizer.enable_truncation(max_length=exported.spec.max_length)
    fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    rows = []
    for i, text in enumerate(texts):
        encoding = tokenizer.encode(text, pairs[i]) if pairs is not None else tokenizer.encode(text)
        feed = {t.name: np.array([getattr(encoding, fields[t.name])], dtype=np.int64) for t in exported.spec.inputs}
        rows.append(session.run([exported.logits.name], feed)[0][0])
    return np.stack(rows).astype(np.float32)


def _document_logits(exported: ExportedModel, tokenizer: Any, session: Any, texts: list[str],
                     spec: TextInputs) -> np.ndarray:
    """Per-text logits of cut or windowed texts (``io_spec.json`` ``text_inputs``), one window per run."""
    tokenizer.no_truncation()
    rows = []
    for text in texts:
        windows = []
        for ids in window_ids(tokenizer.encode(text), spec):
            feed = {t.name: np.array([ids if t.name == "input_ids" else ([1] * len(ids) if t.name == "attention_mask"
                                                                          else [0] * len(ids))], dtype=np.int64)
                    for t in exported.spec.inputs}
            windows.append(session.run([exported.logits.name], feed)[0][0])
        rows.append(aggregate(np.stack(windows), np.zeros(len(windows), dtype=np.int64), 1, spec.aggregation)[0])
    return np.stack(rows).astype(np.float32)


def reference_image_logits(exported: ExportedModel, images: Sequence[bytes], *, threads: int = 1) -> np.ndarray:
    """Logits of the exported graph in-process, one image per run, after the reference ``ImagePreprocessor``.

    Raises:
        ValueError: ``exported`` is not an image model.
        DataError: An image does not decode.
    """
    from transferkit.data.transforms import ImagePreprocessConfig, ImagePreprocessor

    if exported.image_preprocessing is None:
        raise ValueError("reference_image_logits needs an image model")
    preprocessor = ImagePreprocessor(ImagePreprocessConfig.from_dict(exported.image_preprocessing))
    session = _session(exported, threads)
    name, dtype = exported.spec.inputs[0].name, np.dtype(exported.spec.inputs[0].dtype)
    rows = []
    for i, data in enumerate(images):
        pixels = preprocessor(data, f"smoke image {i}").numpy()[None].astype(dtype)
        rows.append(session.run([exported.logits.name], {name: pixels})[0][0])
    return np.stack(rows).astype(np.float32)


def synthetic_smoke_images(seed: int = 0) -> list[bytes]:
    """Generated images covering the decoder's paths: grey PNG, RGB JPEG, RGBA PNG, 16-bit grey PNG.

    Used when no real images are given; they check the served preprocessing and graph against the
    in-process reference, not what the model predicts for them.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, 28 * 20).reshape(20, 28).astype(np.uint8)
    rgb = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, size=(24, 24, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(np.arange(24)[None, :] < 12, 255, 0).astype(np.uint8)
    deep = (np.linspace(0, 65535, 16 * 18).reshape(16, 18)).astype(np.uint16)
    encoded = []
    for image, fmt in ((Image.fromarray(ramp, "L"), "PNG"), (Image.fromarray(rgb, "RGB"), "JPEG"),
                       (Image.fromarray(rgba, "RGBA"), "PNG"), (Image.fromarray(deep), "PNG")):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        encoded.append(buffer.getvalue())
    return encoded


def smoke_images_from_data(data_dir: str | Path, count: int = 4) -> tuple[list[bytes], list[str]]:
    """Up to ``count`` test-split images of a prepared image dataset, one per label first.

    Returns:
        The encoded images and their true label names.

    Raises:
        ConfigError: ``data_dir`` is not a prepared image dataset (the message names the field and path).
    """
    from transferkit.data.prepared import load_prepared
    from transferkit.tasks import get_task

    try:
        dataset = load_prepared(data_dir)
        if "image" not in get_task(dataset).required_columns:
            raise ConfigError(f"{data_dir}: a {dataset.task} dataset, not an image dataset")
        images, names = dataset.images("test"), dataset.label_names("test")
    except TransferkitError as exc:
        raise ConfigError(f"smoke_data: {exc}") from exc
    if not images:
        raise ConfigError(f"smoke_data: {Path(data_dir) / 'test.parquet'} has no rows")
    first_of_label: dict[str, int] = {}
    for index, name in enumerate(names):
        first_of_label.setdefault(name, index)
    firsts = set(first_of_label.values())
    chosen = sorted(firsts) + [i for i in range(len(images)) if i not in firsts]
    chosen = sorted(chosen[:count])
    return [images[i] for i in chosen], [names[i] for i in chosen]


def smoke_test(control: TritonControl, exported: ExportedModel, model: str, version: int | None,
               texts: list[str] | tuple[str, ...] = DEFAULT_SMOKE_TEXTS, tolerance: float | None = None,
               images: Sequence[bytes] | None = None) -> SmokeResult:
    """Compare the served model (version) with in-process ONNX Runtime on fixed inputs.

    Args:
        control: Client of the server.
        exported: The export the version was built from.
        model: Ensemble name.
        version: Version to query (None: the newest ready one).
        texts: Sentences for text models.
        tolerance: Max |logit diff| (default by precision, :func:`default_tolerance`).
        images: Encoded images for image models (default :func:`synthetic_smoke_images`).
    """
    if exported.kind == "image":
        inputs = list(images) if images is not None else synthetic_smoke_images()
        expected = reference_image_logits(exported, inputs)
        tol = default_tolerance(exported, expected) if tolerance is None else tolerance
        served = control.infer_images(model, inputs, version=version)
        count = len(inputs)
    else:
        texts = list(texts)
        # Sentence-pair models get each sentence paired with the next one.
        pairs = texts[1:] + texts[:1] if exported.text_pair else None
        expected = reference_logits(exported, texts, pairs=pairs)
        tol = default_tolerance(exported, expected) if tolerance is None else tolerance
        served = control.infer_texts(model, texts, version=version, pairs=pairs)
        count = len(texts)
    logits = np.asarray(served["logits"], dtype=np.float32).reshape(expected.shape)
    labels = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(served["label"]).reshape(-1)]
    expected_labels = [exported.labels[i] for i in expected.argmax(axis=-1)]
    diff = float(np.max(np.abs(logits - expected)))
    result = SmokeResult(True, count, diff, tol, labels, expected_labels)
    probabilities = np.asarray(served["probabilities"], dtype=np.float32).reshape(expected.shape)
    if diff > tol:
        result.passed, result.reason = False, f"max |logit diff| {diff:.4g} > tolerance {tol:.4g}"
    elif not np.allclose(probabilities.sum(axis=-1), 1.0, atol=1e-4):
        result.passed, result.reason = False, "probabilities do not sum to 1"
    else:
        ordered = np.sort(expected, axis=-1)
        margins = ordered[:, -1] - ordered[:, -2] if expected.shape[1] > 1 else np.full(count, np.inf)
        wrong = [i for i, (got, want) in enumerate(zip(labels, expected_labels, strict=True))
                 if got != want and margins[i] > 2 * tol]
        if wrong:
            result.passed = False
            result.reason = f"labels differ for inputs {wrong}: served {[labels[i] for i in wrong]}, " \
                            f"expected {[expected_labels[i] for i in wrong]}"
    logger.info("Smoke test of %s v%s: %s (max |diff| %.3g, tolerance %.3g)", model, version,
                "passed" if result.passed else f"FAILED: {result.reason}", diff, tol)
    return result
