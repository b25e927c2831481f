"""Smoke test of a freshly loaded model version against ONNX Runtime run in-process.

Fixed sentences go through the served ensemble (raw strings in) and through the exported graph with
the exported tokenizer in this process. Logits must agree within a tolerance and the served labels
must equal the in-process arg-max wherever the in-process margin is larger than that tolerance (a
near-tie may flip legitimately: dynamic int8 quantisation depends on the batch it sees).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

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


def reference_logits(exported: ExportedModel, texts: list[str], *, pairs: list[str] | None = None,
                     threads: int = 1) -> np.ndarray:
    """Logits of the exported graph in-process, one input per run (tokenised like the server)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    if exported.tokenizer_dir is None:
        raise ValueError("reference_logits needs a text model with a tokenizer")
    tokenizer = Tokenizer.from_file(str(exported.tokenizer_dir / "tokenizer.json"))
    tokenizer.no_padding()
    if exported.spec.max_length:
        tokenizer.enable_truncation(max_length=exported.spec.max_length)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(exported.onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    rows = []
    for i, text in enumerate(texts):
        encoding = tokenizer.encode(text, pairs[i]) if pairs is not None else tokenizer.encode(text)
        feed = {t.name: np.array([getattr(encoding, fields[t.name])], dtype=np.int64) for t in exported.spec.inputs}
        rows.append(session.run([exported.logits.name], feed)[0][0])
    return np.stack(rows).astype(np.float32)


def smoke_test(control: TritonControl, exported: ExportedModel, model: str, version: int | None,
               texts: list[str] | tuple[str, ...] = DEFAULT_SMOKE_TEXTS, tolerance: float | None = None) -> SmokeResult:
    """Compare the served model (version) with in-process ONNX Runtime on fixed sentences."""
    texts = list(texts)
    # Sentence-pair models get each sentence paired with the next one.
    pairs = texts[1:] + texts[:1] if exported.text_pair else None
    expected = reference_logits(exported, texts, pairs=pairs)
    tol = default_tolerance(exported, expected) if tolerance is None else tolerance
    served = control.infer_texts(model, texts, version=version, pairs=pairs)
    logits = np.asarray(served["logits"], dtype=np.float32).reshape(expected.shape)
    labels = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(served["label"]).reshape(-1)]
    expected_labels = [exported.labels[i] for i in expected.argmax(axis=-1)]
    diff = float(np.max(np.abs(logits - expected)))
    result = SmokeResult(True, len(texts), diff, tol, labels, expected_labels)
    probabilities = np.asarray(served["probabilities"], dtype=np.float32).reshape(expected.shape)
    if diff > tol:
        result.passed, result.reason = False, f"max |logit diff| {diff:.4g} > tolerance {tol:.4g}"
    elif not np.allclose(probabilities.sum(axis=-1), 1.0, atol=1e-4):
        result.passed, result.reason = False, "probabilities do not sum to 1"
    else:
        ordered = np.sort(expected, axis=-1)
        margins = ordered[:, -1] - ordered[:, -2] if expected.shape[1] > 1 else np.full(len(texts), np.inf)
        wrong = [i for i, (got, want) in enumerate(zip(labels, expected_labels, strict=True))
                 if got != want and margins[i] > 2 * tol]
        if wrong:
            result.passed = False
            result.reason = f"labels differ for inputs {wrong}: served {[labels[i] for i in wrong]}, " \
                            f"expected {[expected_labels[i] for i in wrong]}"
    logger.info("Smoke test of %s v%s: %s (max |diff| %.3g, tolerance %.3g)", model, version,
                "passed" if result.passed else f"FAILED: {result.reason}", diff, tol)
    return result
