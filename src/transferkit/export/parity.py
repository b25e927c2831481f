"""Parity gate: PyTorch and ONNX Runtime must produce the same logits on real inputs.

Optimum's exporter only warns when outputs drift; here a difference above ``atol`` or a single
disagreeing predicted label raises :class:`~transferkit.errors.ParityError`. Text models are compared with
:func:`check_parity` (several batch sizes and padded lengths), image models with :func:`check_image_parity`
(several batch sizes of preprocessed validation images).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from transferkit.errors import ExportError, ParityError
from transferkit.export.config import ParityCase
from transferkit.export.runtime import encode

logger = logging.getLogger(__name__)

# (batch size, padding, truncation length or None for max_length): single rows, dynamic padding, full
# length padding, half and short truncation exercise the dynamic batch and sequence axes.
PARITY_CASES: tuple[tuple[int, str, int | None], ...] = (
    (1, "longest", None),
    (4, "longest", None),
    (8, "max_length", None),
    (2, "max_length", -2),
    (3, "longest", 8),
)
# Batch sizes of the image parity cases: single images and several sizes exercise the dynamic batch axis.
IMAGE_PARITY_BATCHES: tuple[int, ...] = (1, 4, 8, 3)


def _window(values: Sequence[Any], start: int, size: int) -> list[Any]:
    return [values[(start + i) % len(values)] for i in range(size)]


def torch_logits(model: Any, input_names: Sequence[str], feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Run the PyTorch model in fp32 eval mode on numpy feeds."""
    import torch

    with torch.no_grad():
        out = model(**{name: torch.from_numpy(feeds[name]) for name in input_names})
    return out.logits.detach().float().cpu().numpy()


def check_parity(
    model: Any,
    session: Any,
    tokenizer: Any,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    input_names: Sequence[str],
    max_length: int,
    atol: float,
    cases: Sequence[tuple[int, str, int | None]] = PARITY_CASES,
) -> list[ParityCase]:
    """Compare logits of ``model`` (PyTorch) and ``session`` (ONNX Runtime) over several input shapes.

    Args:
        model: PyTorch sequence classifier in eval mode.
        session: ONNX Runtime session of the exported graph.
        tokenizer: The model's tokenizer.
        texts: Real validation texts (cycled when there are fewer than a case needs).
        pairs: Second texts of text-pair tasks, or None.
        input_names: Graph inputs.
        max_length: Export ``max_length``.
        atol: Largest allowed absolute logit difference.
        cases: ``(batch_size, padding, truncation)`` shapes to test; a negative truncation ``-k`` means
            ``max_length // k``.

    Returns:
        One :class:`ParityCase` per shape.

    Raises:
        ParityError: Any case exceeds ``atol``, any predicted label differs, or outputs are not finite.

    """
    if not texts:
        raise ExportError("parity: no validation texts to compare on")
    results: list[ParityCase] = []
    offset = 0
    for batch_size, padding, truncate in cases:
        batch = _window(texts, offset, batch_size)
        batch_pairs = _window(pairs, offset, batch_size) if pairs is not None else None
        offset += batch_size
        if truncate is not None and truncate < 0:
            truncate = max(max_length // -truncate, 2)
        length = min(truncate or max_length, max_length)
        feeds = encode(tokenizer, batch, batch_pairs, input_names, length, padding=padding)
        expected = torch_logits(model, input_names, feeds)
        got = np.asarray(session.run(["logits"], feeds)[0], dtype=np.float32)
        seq_len = int(feeds["input_ids"].shape[1])
        where = f"batch {batch_size}, seq {seq_len} (padding={padding})"
        diff, agree = _compare(expected, got, where, atol)
        results.append(ParityCase(batch_size, seq_len, padding, diff, agree, list(feeds["input_ids"].shape)))
    _log_passed(results, atol)
    return results


def check_image_parity(
    model: Any,
    session: Any,
    pixel_values: np.ndarray,
    atol: float,
    batch_sizes: Sequence[int] = IMAGE_PARITY_BATCHES,
) -> list[ParityCase]:
    """Compare logits of an image classifier in PyTorch and ONNX Runtime over several batch sizes.

    Args:
        model: PyTorch image classifier in eval mode (``model(pixel_values).logits``).
        session: ONNX Runtime session of the exported graph (input ``pixel_values``).
        pixel_values: Real preprocessed validation images ``[N, 3, S, S]`` (cycled when a case needs more).
        atol: Largest allowed absolute logit difference.
        batch_sizes: Batch sizes to test.

    Returns:
        One :class:`ParityCase` per batch size (``seq_len`` 0, padding ``none``).

    Raises:
        ExportError: No validation images.
        ParityError: Any case exceeds ``atol``, any predicted label differs, or outputs are not finite.

    """
    import torch

    if len(pixel_values) == 0:
        raise ExportError("parity: no validation images to compare on")
    results: list[ParityCase] = []
    offset = 0
    for batch_size in batch_sizes:
        rows = [(offset + i) % len(pixel_values) for i in range(batch_size)]
        offset += batch_size
        batch = np.ascontiguousarray(pixel_values[rows], dtype=np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(batch)).logits.detach().float().cpu().numpy()
        got = np.asarray(session.run(["logits"], {"pixel_values": batch})[0], dtype=np.float32)
        shape = list(batch.shape)
        diff, agree = _compare(expected, got, f"batch {batch_size}, pixel_values {shape}", atol)
        results.append(ParityCase(batch_size, 0, "none", diff, agree, shape))
    _log_passed(results, atol)
    return results


def _compare(expected: np.ndarray, got: np.ndarray, where: str, atol: float) -> tuple[float, bool]:
    """Max absolute logit difference and label agreement of one case; raise when the gate fails."""
    if got.shape != expected.shape:
        raise ParityError(f"parity: ONNX logits shape {got.shape} != PyTorch {expected.shape} at {where}")
    if not (np.isfinite(got).all() and np.isfinite(expected).all()):
        raise ParityError(f"parity: non-finite logits at {where}")
    diff = float(np.max(np.abs(got - expected)))
    agree = bool(np.array_equal(got.argmax(axis=1), expected.argmax(axis=1)))
    logger.debug("parity %s: max |diff| %.3g, labels agree: %s", where, diff, agree)
    # fp32 kernels of the two runtimes differ by rounding, which grows with the logits' magnitude (a trained
    # CNN's logits reach 10-30): the tolerance is atol for logits up to 1 and relative beyond.
    scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    if diff > atol * scale:
        raise ParityError(f"parity: max |logit diff| {diff:.3g} > atol {atol:g} x logit scale {scale:.3g} at {where}")
    if not agree:
        flips = int(np.sum(got.argmax(axis=1) != expected.argmax(axis=1)))
        raise ParityError(f"parity: predicted labels differ on {flips}/{len(got)} rows at {where}")
    return diff, agree


def _log_passed(results: list[ParityCase], atol: float) -> None:
    logger.info("Parity passed: max |logit diff| %.3g over %d shapes (atol %g)",
                max(c.max_abs_diff for c in results), len(results), atol)


def check_document_parity(model: Any, session: Any, tokenizer: Any, texts: Sequence[str], input_names: Sequence[str],
                          text_inputs: Any, atol: float, documents: int = 16) -> ParityCase:
    """PyTorch vs ONNX Runtime on whole documents: cut or windowed by ``text_inputs``, logits aggregated per text.

    Returns:
        A :class:`ParityCase` with padding ``documents`` (batch = documents compared, seq_len = windows).

    Raises:
        ParityError: A difference beyond ``atol`` or a different document label.
    """
    from transferkit.data.long_text import encode_documents
    from transferkit.export.runtime import predict_document_logits

    batch = list(texts[:documents])
    _, doc_index = encode_documents(tokenizer, batch, text_inputs)
    expected = predict_document_logits(lambda feeds: torch_logits(model, input_names, feeds), tokenizer, batch,
                                       input_names, text_inputs, 8)
    got = predict_document_logits(lambda feeds: session.run(["logits"], feeds)[0], tokenizer, batch, input_names,
                                  text_inputs, 8)
    where = f"{len(batch)} whole documents ({len(doc_index)} windows, {text_inputs.describe()})"
    diff, agree = _compare(expected, got, where, atol)
    logger.info("Parity on whole documents passed: max |logit diff| %.3g over %s", diff, where)
    return ParityCase(len(batch), len(doc_index), "documents", diff, agree, [len(doc_index), text_inputs.max_length])
