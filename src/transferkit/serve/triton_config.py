"""Triton model configurations of a deployment, built as ``model_config_pb2.ModelConfig`` messages.

One builder per model of the repository layout (:mod:`transferkit.serve.repository`): the ONNX model in its
production and local variants, the tokenizer or image preprocessing front model, the postprocess model and
the ensemble that wires them; :func:`to_pbtxt` and :func:`parse_pbtxt` convert to and from protobuf text.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from google.protobuf import text_format

from transferkit.errors import ServingError
from transferkit.export.io_spec import TensorSpec

if TYPE_CHECKING:
    from transferkit.serve.repository import ExportedModel, RepositoryOptions

LABELS_FILE = "labels.txt"
TEXT_INPUT = "text"
TEXT_PAIR_INPUT = "text_pair"
IMAGE_INPUT = "image"
PREPROCESSOR_FILE = "preprocessor.json"
PROBABILITIES_OUTPUT = "probabilities"
LABEL_OUTPUT = "label"
TRITON_DTYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "string": "TYPE_STRING",
}

WINDOW_DOC = "window_doc"  # chunked long documents: text index of each window (tokenizer -> postprocess)
# Chunked long documents: a request of N texts becomes W >= N windows; the graph and postprocess models accept
# this many times max_batch_size rows, and the tokenizer refuses a request needing more.
CHUNK_BATCH_FACTOR = 16


def _pb():
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _dims(tensor: TensorSpec) -> list[int]:
    # io_spec dims include the batch axis; Triton's exclude it when max_batch_size > 0.
    return list(tensor.dims[1:]) if tensor.dims else [-1]


def _input_dims(exported: ExportedModel, tensor: TensorSpec) -> list[int]:
    """Graph input dims without the batch axis; image inputs are always ``[3, S, S]``."""
    if exported.kind == "image":
        return [3, exported.image_size, exported.image_size]
    return _dims(tensor)


def _logit_dims(exported: ExportedModel) -> list[int]:
    dims = _dims(exported.logits)
    if dims and dims[-1] == -1:
        dims[-1] = len(exported.labels)
    return dims


def _set_common(config: Any, options: RepositoryOptions, *, kind: str, count: int, helper: bool = False) -> None:
    pb = _pb()
    config.max_batch_size = options.max_batch_size
    config.version_policy.latest.num_versions = options.versions_to_serve
    group = config.instance_group.add()
    group.kind = pb.ModelInstanceGroup.KIND_GPU if kind == "gpu" else pb.ModelInstanceGroup.KIND_CPU
    group.count = count
    batching = config.dynamic_batching
    batching.preferred_batch_size.extend(options.preferred_batch_sizes)
    batching.max_queue_delay_microseconds = 0 if helper else options.max_queue_delay_us


def _param(config: Any, key: str, value: str) -> None:
    config.parameters[key].string_value = value


def window_rows(options: RepositoryOptions) -> int:
    """Rows (windows) the graph and postprocess models of a chunked text model accept per batch."""
    return options.max_batch_size * CHUNK_BATCH_FACTOR


def text_input_params(config: Any, exported: ExportedModel, options: RepositoryOptions) -> None:
    """Parameters of the tokenizer step: ``max_length`` and how long texts are cut or windowed."""
    _param(config, "max_length", str(exported.spec.max_length or 0))
    inputs = exported.spec.text_inputs
    if inputs:
        _param(config, "truncation", str(inputs.get("truncation", "head")))
        _param(config, "long_documents", str(inputs.get("long_documents", "truncate")))
        _param(config, "stride", str(int(inputs.get("stride", 0))))
        _param(config, "aggregation", str(inputs.get("aggregation", "mean")))
    if exported.chunked:
        _param(config, "max_windows", str(window_rows(options)))


def _add_tensor(container: Any, name: str, dtype: str, dims: list[int], **extra: Any) -> Any:
    pb = _pb()
    tensor = container.add()
    tensor.name = name
    tensor.data_type = pb.DataType.Value(TRITON_DTYPES[dtype])
    tensor.dims.extend(dims)
    for key, value in extra.items():
        setattr(tensor, key, value)
    return tensor


def onnx_production_config(name: str, exported: ExportedModel, options: RepositoryOptions) -> Any:
    """``NAME_onnx/config.pbtxt``: ONNX Runtime backend for GPU (or CPU) nodes."""
    config = _pb().ModelConfig(name=name, platform="onnxruntime_onnx", default_model_filename="model.onnx")
    _set_common(config, options, kind=options.instance_kind, count=options.instance_count)
    if exported.chunked:
        config.max_batch_size = window_rows(options)
    for tensor in exported.spec.inputs:
        _add_tensor(config.input, tensor.name, tensor.dtype, _input_dims(exported, tensor))
    for i, tensor in enumerate(exported.spec.outputs):
        dims = _logit_dims(exported) if i == 0 else _dims(tensor)
        extra = {"label_filename": LABELS_FILE} if i == 0 else {}
        _add_tensor(config.output, tensor.name, tensor.dtype, dims, **extra)
    if options.tensorrt_fp16:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
        accelerator.name = "tensorrt"
        accelerator.parameters["precision_mode"] = "FP16"
        accelerator.parameters["max_workspace_size_bytes"] = str(1 << 30)
    return config


def onnx_local_config(name: str, exported: ExportedModel, options: RepositoryOptions) -> Any:
    """``NAME_onnx/configs/local.pbtxt``: python backend running the same graph on CPU."""
    config = _pb().ModelConfig(name=name, backend="python")
    _set_common(config, options, kind="cpu", count=options.local_instance_count)
    if exported.chunked:
        config.max_batch_size = window_rows(options)
    for tensor in exported.spec.inputs:
        dims = _input_dims(exported, tensor)
        # Ragged batching lets variable-length text requests batch; fixed-size inputs (images) need none.
        extra = {"allow_ragged_batch": True} if -1 in dims else {}
        _add_tensor(config.input, tensor.name, tensor.dtype, dims, **extra)
    for i, tensor in enumerate(exported.spec.outputs):
        dims = _logit_dims(exported) if i == 0 else _dims(tensor)
        extra = {"label_filename": LABELS_FILE} if i == 0 else {}
        _add_tensor(config.output, tensor.name, tensor.dtype, dims, **extra)
    _param(config, "model_file", "model.onnx")
    _param(config, "intra_op_threads", str(options.local_threads))
    _param(config, "pad_values", json.dumps({t.name: 0 for t in exported.spec.inputs}))
    return config


def tokenizer_config(name: str, exported: ExportedModel, options: RepositoryOptions, pad_id: int) -> Any:
    """``NAME_tokenizer/config.pbtxt`` (python backend; the same on every server)."""
    config = _pb().ModelConfig(name=name, backend="python")
    _set_common(config, options, kind="cpu", count=1, helper=True)
    for text_input in exported.text_inputs:
        _add_tensor(config.input, text_input, "string", [1])
    for tensor in exported.spec.inputs:
        _add_tensor(config.output, tensor.name, tensor.dtype, [-1])
    if exported.chunked:
        _add_tensor(config.output, WINDOW_DOC, "int64", [1])
    text_input_params(config, exported, options)
    _param(config, "pad_to_multiple_of", str(options.pad_to_multiple_of))
    _param(config, "pad_id", str(pad_id))
    return config


def image_preprocess_config(name: str, exported: ExportedModel, options: RepositoryOptions) -> Any:
    """``NAME_preprocess/config.pbtxt``: encoded images in, ``pixel_values`` out (python backend, Pillow).

    The same file serves production and local servers: the python backend runs on CPU everywhere.
    """
    config = _pb().ModelConfig(name=name, backend="python")
    _set_common(config, options, kind="cpu", count=1, helper=True)
    _add_tensor(config.input, IMAGE_INPUT, "string", [1])
    tensor = exported.spec.inputs[0]
    _add_tensor(config.output, tensor.name, tensor.dtype, _input_dims(exported, tensor))
    _param(config, "preprocessor_file", PREPROCESSOR_FILE)
    return config


def postprocess_config(name: str, exported: ExportedModel, options: RepositoryOptions) -> Any:
    """``NAME_postprocess/config.pbtxt``: softmax, label names, and the logits passed through."""
    config = _pb().ModelConfig(name=name, backend="python")
    _set_common(config, options, kind="cpu", count=1, helper=True)
    _add_tensor(config.input, exported.logits.name, exported.logits.dtype, _logit_dims(exported))
    if exported.chunked:
        # Windows in (W rows), one row per text out: logits aggregated by window_doc.
        config.max_batch_size = window_rows(options)
        _add_tensor(config.input, WINDOW_DOC, "int64", [1])
        _param(config, "aggregation", str(exported.spec.text_inputs.get("aggregation", "mean")))
    _add_tensor(config.output, PROBABILITIES_OUTPUT, "float32", _logit_dims(exported))
    _add_tensor(config.output, LABEL_OUTPUT, "string", [1])
    _add_tensor(config.output, exported.logits.name, exported.logits.dtype, _logit_dims(exported))
    _param(config, "entry_model", name.removesuffix("_postprocess"))
    _param(config, "serving_metrics", "1" if options.serving_metrics else "0")
    return config


def ensemble_config(name: str, exported: ExportedModel, options: RepositoryOptions) -> Any:
    """``NAME/config.pbtxt``: the entry point chaining tokenizer -> graph -> postprocess."""
    config = _pb().ModelConfig(name=name, platform="ensemble", max_batch_size=options.max_batch_size)
    config.version_policy.latest.num_versions = options.versions_to_serve
    logits = exported.logits
    text = exported.kind == "text"
    image = exported.kind == "image"
    if text:
        for text_input in exported.text_inputs:
            _add_tensor(config.input, text_input, "string", [1])
    elif image:
        _add_tensor(config.input, IMAGE_INPUT, "string", [1])
    else:
        for tensor in exported.spec.inputs:
            _add_tensor(config.input, tensor.name, tensor.dtype, _dims(tensor))
    _add_tensor(config.output, logits.name, logits.dtype, _logit_dims(exported), label_filename=LABELS_FILE)
    _add_tensor(config.output, PROBABILITIES_OUTPUT, "float32", _logit_dims(exported))
    _add_tensor(config.output, LABEL_OUTPUT, "string", [1])
    steps = config.ensemble_scheduling.step
    if text:
        step = steps.add(model_name=f"{name}_tokenizer", model_version=-1)
        for text_input in exported.text_inputs:
            step.input_map[text_input] = text_input
        for tensor in exported.spec.inputs:
            step.output_map[tensor.name] = f"_{tensor.name}"
        if exported.chunked:
            step.output_map[WINDOW_DOC] = f"_{WINDOW_DOC}"
    if image:
        step = steps.add(model_name=f"{name}_preprocess", model_version=-1)
        step.input_map[IMAGE_INPUT] = IMAGE_INPUT
        for tensor in exported.spec.inputs:
            step.output_map[tensor.name] = f"_{tensor.name}"
    step = steps.add(model_name=f"{name}_onnx", model_version=-1)
    for tensor in exported.spec.inputs:
        step.input_map[tensor.name] = f"_{tensor.name}" if text or image else tensor.name
    step.output_map[logits.name] = f"_{logits.name}"
    # Every ensemble output comes from the last step (which passes the logits through): Triton 2.51
    # deadlocks when a client requests a subset of outputs and an intermediate is also an output.
    step = steps.add(model_name=f"{name}_postprocess", model_version=-1)
    step.input_map[logits.name] = f"_{logits.name}"
    if exported.chunked:
        step.input_map[WINDOW_DOC] = f"_{WINDOW_DOC}"
    step.output_map[logits.name] = logits.name
    step.output_map[PROBABILITIES_OUTPUT] = PROBABILITIES_OUTPUT
    step.output_map[LABEL_OUTPUT] = LABEL_OUTPUT
    return config


def to_pbtxt(config: Any) -> str:
    """Protobuf text format of a ``ModelConfig``."""
    return text_format.MessageToString(config)


def parse_pbtxt(text: str, *, source: str = "config.pbtxt") -> Any:
    """Parse a ``config.pbtxt``.

    Raises:
        ServingError: Syntax errors, unknown fields or bad enum values.
    """
    try:
        return text_format.Parse(text, _pb().ModelConfig())
    except text_format.ParseError as exc:
        raise ServingError(f"{source}: invalid model config ({exc})") from exc


# --- builder -----------------------------------------------------------------------------------
