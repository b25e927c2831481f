"""Quantized and reduced-precision variants of an exported fp32 graph (onnxruntime's tools).

* ``dynamic``: int8 weights per output channel, activations quantized at run time (``MatMulInteger``).
  The CPU choice: no calibration data, and per-channel stays much closer to fp32 than per-tensor
  (embedding cosine 0.993 vs 0.968 measured on MiniLM). Not accelerated by CUDA or TensorRT.
* ``qdq``: static int8 in QuantizeLinear/DequantizeLinear format with scales calibrated on training samples.
  By default symmetric int8 activations on the matrix products (``QDQ_OP_TYPES``): the layout TensorRT builds
  int8 engines from. For CNNs on CPU the export step quantizes every supported op with asymmetric uint8
  activations (ONNX Runtime's U8S8 CPU kernels): on EfficientNet-Lite0 (digits, 32 px, 2 threads) that kept
  accuracy (91.1% vs fp32 88.3%) where symmetric int8 ran 2.6x slower and Conv/Gemm-only QDQ lost 11+ points.
* ``fp16``: float16 weights and compute with float32 graph inputs/outputs, for CUDA execution.

:func:`quantize_onnx` works on any ONNX file on its own and never leaves a partial output file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import ExportError

logger = logging.getLogger(__name__)

MODES = ("dynamic", "qdq", "fp16")
# Ops given int8 weights by static QDQ quantization: the matrix products TensorRT runs in int8.
QDQ_OP_TYPES = ("MatMul", "Gemm")
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # protobuf's 2 GB limit, with headroom


def check_onnx_file(path: str | Path) -> Any:
    """Load and check an ONNX file; return the ``ModelProto``.

    Raises:
        ExportError: Missing, empty, truncated or otherwise invalid file.

    """
    import onnx

    source = Path(path)
    if not source.is_file():
        raise ExportError(f"{source}: ONNX file not found")
    if source.stat().st_size == 0:
        raise ExportError(f"{source}: ONNX file is empty")
    try:
        model = onnx.load(str(source), load_external_data=False)
        onnx.checker.check_model(str(source))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(
            f"{source}: not a valid ONNX model, truncated or corrupted? ({type(exc).__name__}: {first})"
        ) from exc
    if not model.graph.node:
        raise ExportError(f"{source}: ONNX graph has no nodes")
    return model


class FeedsReader:
    """Adapter from an iterable of feed dicts to onnxruntime's ``CalibrationDataReader`` protocol."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._iter: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Next calibration batch, or None when exhausted."""
        return next(self._iter, None)

    def rewind(self) -> None:
        """Start over (some calibrators read the data twice)."""
        self._iter = iter(self._feeds)


def _calibration_reader(feeds: Iterable[dict[str, np.ndarray]]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(FeedsReader, CalibrationDataReader):
        pass

    return Reader(feeds)


class _DropRootInfo(logging.Filter):
    """onnxruntime.quantization logs every skipped node at INFO on the root logger; keep warnings only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextlib.contextmanager
def _quiet_quantizer_logs() -> Iterator[None]:
    # A filter on the root logger sees only records logged to the root logger itself, not propagated ones.
    root = logging.getLogger()
    quiet = _DropRootInfo()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _pre_process(src: Path, dst: Path) -> Path:
    """ONNX shape inference + basic ORT graph cleanup before quantization; the source on failure.

    Symbolic shape inference is skipped: it fails on transformer graphs exported by torch here
    (measured on MiniLM), while plain ONNX shape inference works.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return dst
    except Exception as exc:  # an optional optimization: quantizing the unprocessed graph is still correct
        logger.warning("%s: quantization pre-processing skipped (%s: %s)", src, type(exc).__name__, exc)
        return src


def quantize_onnx(
    src: str | Path,
    dst: str | Path,
    *,
    mode: str = "dynamic",
    calibration: Iterable[dict[str, np.ndarray]] | None = None,
    per_channel: bool = True,
    calibration_method: str = "minmax",
    verify: bool = True,
    op_types: Sequence[str] | None = QDQ_OP_TYPES,
    symmetric_activations: bool = True,
    keep_input_layers_float: bool = False,
    reduce_range: bool = False,
) -> Path:
    """Write a quantized (``dynamic``/``qdq``) or fp16 variant of ``src`` to ``dst``.

    Args:
        src: fp32 ONNX graph.
        dst: Output file; written through a temporary file and renamed, so it is never partial.
        mode: ``dynamic`` (int8, CPU), ``qdq`` (static int8, TensorRT) or ``fp16`` (CUDA).
        calibration: Feed dicts (graph input name -> array: int64 token ids, float32 pixel values) for ``qdq``.
        per_channel: Quantize weights per output channel.
        calibration_method: ``minmax``, ``percentile`` or ``entropy`` (``qdq`` only).
        verify: Open the written graph with ONNX Runtime before renaming it into place (skip when the caller
            opens it right after anyway).
        op_types: Op types static quantization covers (``qdq`` only); None: every op type the quantizer
            supports (Conv, Gemm, Add, Clip, pooling... for CNNs).
        symmetric_activations: ``qdq`` only: symmetric int8 activations (zero point 0, what TensorRT needs);
            False: asymmetric uint8 activations, ONNX Runtime's fast CPU kernels. Weights are symmetric int8.
        keep_input_layers_float: ``qdq`` only: leave the nodes that read a graph input (a CNN's stem
            convolution) in float. Measured on EfficientNet-Lite0 / Fashion-MNIST (400 test images): a
            1-epoch model lost 4.0 points with the stem quantized and 1.5 without; a 2-epoch model 0.4 and 0.2.
        reduce_range: ``dynamic``/``qdq``: 7-bit weights, so ONNX Runtime's uint8 x int8 kernels cannot saturate
            on x86-64 CPUs without VNNI (see :mod:`transferkit.hardware`); the graph then computes the same
            numbers on every CPU. False: full 8-bit weights, exact only where VNNI, AMX or ARM dot product exist.

    Returns:
        ``dst``.

    Raises:
        ExportError: Invalid or corrupted ``src``, missing/empty calibration data, or a failing quantizer.

    """
    if mode not in MODES:
        raise ExportError(f"quantize: mode {mode!r} is not one of {', '.join(MODES)}")
    source, target = Path(src), Path(dst)
    check_onnx_file(source)
    reader = None
    if mode == "qdq":
        reader = _calibration_reader(calibration or [])
        if len(reader) == 0:
            raise ExportError(f"quantize: {source}: static QDQ quantization needs calibration samples; got none "
                              "(is the calibration split empty?)")
    target.parent.mkdir(parents=True, exist_ok=True)
    large = source.stat().st_size > _EXTERNAL_DATA_THRESHOLD
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as work:
        out = Path(work) / target.name
        try:
            with _quiet_quantizer_logs():
                _write_variant(source, out, Path(work), mode, reader, per_channel, calibration_method, large,
                               op_types, symmetric_activations, keep_input_layers_float, reduce_range)
            if verify:
                _check_loads(out)
        except ExportError:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExportError(f"quantize: {source} ({mode}) failed: {type(exc).__name__}: {first}") from exc
        os.replace(out, target)
        data_file = Path(work) / f"{target.name}.data"
        if data_file.exists():
            os.replace(data_file, target.parent / data_file.name)
    logger.info("Wrote %s variant %s (%.1f MB) in %.1f s", mode, target, target.stat().st_size / 1e6,
                time.perf_counter() - started)
    return target


def _write_variant(source: Path, out: Path, work: Path, mode: str, reader: Any, per_channel: bool,
                   calibration_method: str, large: bool, op_types: Sequence[str] | None,
                   symmetric_activations: bool, keep_input_layers_float: bool = False,
                   reduce_range: bool = False) -> None:
    import onnx

    if mode == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # keep_io_types: inputs and logits stay int64/float32, so every variant shares one IO spec.
        converted = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        onnx.save(converted, str(out), save_as_external_data=large)
    else:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

        prepared = _pre_process(source, work / "preprocessed.onnx")
        # Shape inference cannot type outputs of contrib ops (fused graphs); they are float.
        extra: dict[str, Any] = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        if mode == "dynamic":
            quantize_dynamic(
                str(prepared), str(out), per_channel=per_channel, reduce_range=reduce_range,
                weight_type=QuantType.QInt8, use_external_data_format=large, extra_options=extra,
            )
        else:
            from onnxruntime.quantization import CalibrationMethod

            method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                      "entropy": CalibrationMethod.Entropy}[calibration_method]
            # TensorRT consumes symmetric int8 scales (zero point 0) for activations and weights; ONNX Runtime's
            # CPU kernels are fastest with asymmetric uint8 activations and symmetric int8 weights.
            extra.update({"ActivationSymmetric": symmetric_activations, "WeightSymmetric": True})
            graph = (onnx.load(str(prepared), load_external_data=False).graph
                     if keep_input_layers_float or reduce_range else None)
            excluded: list[str] = []
            if keep_input_layers_float:
                inputs = {i.name for i in graph.input}
                excluded = [n.name for n in graph.node if inputs & set(n.input)]
            if reduce_range:
                extra["TensorQuantOverrides"] = {
                    name: [{"axis": 0, "reduce_range": False}] for name in depthwise_conv_weights(graph)
                }
            quantize_static(
                str(prepared), str(out), reader, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types) if op_types is not None else None, per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=method, use_external_data_format=large,
                nodes_to_exclude=excluded, extra_options=extra,
            )


def depthwise_conv_weights(graph: Any) -> list[str]:
    """Weight initializers of depthwise convolutions (one input channel per group).

    ONNX Runtime runs depthwise int8 convolutions with a kernel that widens to 16 bits before multiplying
    and accumulates in 32 bits, so full-range weights cannot saturate there on any CPU: the portable recipe
    keeps them 8-bit. Verified on EfficientNet-Lite0 under an emulated AVX2-only CPU (qemu-user -cpu Haswell):
    predictions identical to the VNNI host's, 2.8 points more accurate than 7-bit depthwise weights.
    """
    initializers = {i.name: list(i.dims) for i in graph.initializer}
    names = []
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        dims = initializers.get(node.input[1])
        if group > 1 and dims is not None and len(dims) >= 2 and dims[1] == 1:
            names.append(node.input[1])
    return names


def _check_loads(path: Path) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"quantize: the written graph does not load in ONNX Runtime ({first})") from exc
