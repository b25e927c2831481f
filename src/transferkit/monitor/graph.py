"""Expose the input of the classification head of an exported graph as an extra output.

The monitor compares what the head reads (the pooled embedding) between the baseline and served traffic.
The exported graphs output only logits, so the tensor is found by walking back from the logits output to
the nearest matrix product (``Gemm``/``MatMul``, their dynamic-int8 ``MatMulInteger`` form, or a QDQ
``MatMul``) and taking its activation input, skipping quantize/dequantize nodes back to the float tensor.
The same walk works for text (BERT pooler, mean pooling) and image (global pooling + flatten) heads.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from transferkit.errors import MonitorError

EMBEDDING_OUTPUT = "monitor_embedding"
_PRODUCTS = ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul")
_QUANT = ("DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear")


def find_embedding_tensor(model: Any, logits: str | None = None) -> str:
    """Name of the float tensor the classification head reads.

    Args:
        model: An ``onnx.ModelProto``.
        logits: The logits output (default: the first graph output).

    Raises:
        MonitorError: No matrix product feeds the logits.
    """
    graph = model.graph
    logits = logits or graph.output[0].name
    producers = {out: node for node in graph.node for out in node.output}
    constants = {i.name for i in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    queue, seen = deque([logits]), set()
    while queue:
        name = queue.popleft()
        node = producers.get(name)
        if node is None or name in seen:
            continue
        seen.add(name)
        if node.op_type in _PRODUCTS:
            return _float_source(node.input[0], producers)
        queue.extend(i for i in node.input if i and i not in constants)
    raise MonitorError(f"{logits}: no matrix product (Gemm/MatMul) feeds this output; cannot locate the "
                       "classification head's input")


def _float_source(name: str, producers: dict[str, Any]) -> str:
    """Follow (dynamic) quantize/dequantize nodes back to the float activation."""
    node = producers.get(name)
    while node is not None and node.op_type in _QUANT:
        name = node.input[0]
        node = producers.get(name)
    return name


def with_embedding_output(path: str | Path) -> tuple[bytes, str]:
    """The serialized graph of ``path`` with the head input added as output ``monitor_embedding``.

    The tensor is exposed under a stable name through a ``Cast`` to float32 (fp16 graphs compute the head in
    float16), so servers and baselines ask for the same float32 output whatever the exporter named it.
    Returns the bytes and the original tensor name.

    Raises:
        MonitorError: The file is not an ONNX graph or has no recognisable head.
    """
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError / OSError variants
        raise MonitorError(f"{path}: not a readable ONNX graph ({exc})") from exc
    if any(o.name == EMBEDDING_OUTPUT for o in model.graph.output):
        return model.SerializeToString(), EMBEDDING_OUTPUT
    source = find_embedding_tensor(model)
    model.graph.node.append(helper.make_node("Cast", [source], [EMBEDDING_OUTPUT], name="monitor_embedding",
                                           to=onnx.TensorProto.FLOAT))
    model.graph.output.append(helper.make_tensor_value_info(EMBEDDING_OUTPUT, onnx.TensorProto.FLOAT, None))
    return model.SerializeToString(), source
