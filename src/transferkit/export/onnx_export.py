"""Loading a sequence classifier for export, ``torch.onnx.export`` and CPU graph rewrites.

Choices measured on the development machine (all-MiniLM-L6-v2 classifier, seq 128, batch 32):

* The legacy TorchScript exporter (``dynamo=False``) takes ~3 s, the dynamo exporter ~16 s, with the same
  parity; the legacy one is used.
* The model is exported with **eager** attention. transformers 5 defaults to SDPA, whose traced graph
  carries per-layer ``IsNaN``/``Where`` guards and a broadcast mask that ONNX Runtime's attention
  fusions do not match: the int8 SDPA graph ran ~20% slower (1-thread CPU time) than the eager one.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import ExportError, ModelError
from transferkit.models.catalog import ResolvedModel, resolve_model

logger = logging.getLogger(__name__)

# Architectures whose sequence classifiers are exported and parity-tested (tests/unit/export).
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "gpt2", "llama")
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "logits"
DEFAULT_MAX_LENGTH = 128
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                    "sentencepiece.bpe.model")
_GENERIC_LABEL = re.compile(r"^LABEL_\d+$")


@dataclass
class ExportableModel:
    """A classifier ready for export: PyTorch module in eval mode, its tokenizer and label names."""

    resolved: ResolvedModel
    model: Any
    tokenizer: Any
    labels: list[str]
    input_names: list[str]
    model_limit: int

    @property
    def model_type(self) -> str:
        """``bert``, ``roberta``, ``gpt2``..."""
        return self.resolved.model_type


def check_architecture(resolved: ResolvedModel) -> None:
    """Refuse models that are not sequence classifiers of a supported architecture.

    Raises:
        ExportError: Unsupported ``model_type`` or no sequence-classification head.

    """
    config_path = resolved.path / "config.json"
    model_type = resolved.model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportError(
            f"{config_path}: unsupported architecture model_type={model_type!r} for ONNX export; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    archs = resolved.config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in archs):
        raise ExportError(
            f"{config_path}: architectures={archs} has no sequence-classification head; export the model "
            "written by `transferkit train` (any strategy, including off_the_shelf)"
        )


def _check_tokenizer_files(path: Path) -> None:
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelError(
            f"{path}: no tokenizer files (expected one of {', '.join(_TOKENIZER_FILES)}); "
            "the export directory must ship the tokenizer the model was trained with"
        )


def _model_labels(resolved: ResolvedModel) -> list[str] | None:
    labels_file = resolved.path / "labels.json"
    if labels_file.is_file():
        try:
            labels = json.loads(labels_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ModelError(f"{labels_file}: not valid JSON ({exc})") from exc
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ModelError(f"{labels_file}: expected a JSON list of label names")
        return labels
    return resolved.head_labels


def reconcile_labels(resolved: ResolvedModel, num_labels: int, data_labels: list[str], data_dir: Path) -> list[str]:
    """Return the label names, checking that model head and dataset agree on ids.

    Raises:
        ExportError: The model's labels differ from the dataset's ``labels.json``.

    """
    model_labels = _model_labels(resolved)
    if num_labels != len(data_labels):
        raise ExportError(
            f"{resolved.path / 'config.json'}: the head has {num_labels} labels but {data_dir / 'labels.json'} "
            f"has {len(data_labels)} ({data_labels}); export with the dataset the model was trained on"
        )
    if model_labels is None or all(_GENERIC_LABEL.match(x) for x in model_labels):
        logger.warning("%s: head labels are generic (%s); using the dataset's names %s", resolved.path,
                       model_labels, data_labels)
        return list(data_labels)
    if list(model_labels) != list(data_labels):
        raise ExportError(
            f"{resolved.path}: model labels {model_labels} differ from {data_dir / 'labels.json'} {data_labels}; "
            "the accuracy gate needs the same label ids"
        )
    return list(model_labels)


def load_exportable(
    reference: str | Path,
    data_labels: list[str],
    data_dir: Path,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> ExportableModel:
    """Resolve and load a sequence classifier for export (eager attention, eval mode).

    Raises:
        ModelError: No weights, no tokenizer, or the model does not load.
        ExportError: Unsupported architecture or labels that differ from the dataset's.

    """
    from transferkit.models.loading import load_sequence_classifier, load_tokenizer

    resolved = resolve_model(reference, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    check_architecture(resolved)
    _check_tokenizer_files(resolved.path)
    tokenizer = load_tokenizer(resolved, trust_remote_code=trust_remote_code)
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{resolved.path}: only a slow tokenizer is available; serving needs tokenizer.json")
    model = load_sequence_classifier(resolved, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    try:
        model.set_attn_implementation("eager")
    except (AttributeError, ValueError) as exc:  # models without an attention switch export as they are
        logger.debug("%s: keeping attention implementation (%s)", resolved.path, exc)
    model.eval()
    labels = reconcile_labels(resolved, int(model.config.num_labels), data_labels, data_dir)
    accepted = set(inspect.signature(model.forward).parameters)
    produced = set(tokenizer.model_input_names)
    input_names = [name for name in INPUT_ORDER if name in accepted and name in produced]
    if "input_ids" not in input_names or "attention_mask" not in input_names:
        raise ExportError(
            f"{resolved.path}: tokenizer inputs {sorted(produced)} lack input_ids/attention_mask for this model"
        )
    return ExportableModel(resolved, model, tokenizer, labels, input_names, _model_limit(model.config, tokenizer))


def _model_limit(model_config: Any, tokenizer: Any) -> int:
    """The longest input the model accepts, from its position embeddings and tokenizer."""
    limits = []
    positions = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if positions:
        # RoBERTa-style models reserve padding_idx + 1 positions.
        pad = getattr(model_config, "pad_token_id", None)
        offset = pad + 1 if model_config.model_type in ("roberta", "xlm-roberta") and pad is not None else 0
        limits.append(int(positions) - offset)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if tok_limit and tok_limit < 1_000_000:
        limits.append(int(tok_limit))
    return min(limits) if limits else 512


def resolve_max_length(requested: int | None, exportable: ExportableModel) -> int:
    """``requested``, else the fine-tune run's ``max_length``, else 128; never above the model's limit.

    Raises:
        ExportError: ``requested`` exceeds the model's limit.

    """
    limit = exportable.model_limit
    if requested is not None:
        if requested > limit:
            raise ExportError(f"max_length: {requested} exceeds the model's limit of {limit} tokens")
        return requested
    summary = exportable.resolved.path / "training_summary.json"
    if summary.is_file():
        try:
            value = json.loads(summary.read_text(encoding="utf-8")).get("resolved", {}).get("max_length")
        except (json.JSONDecodeError, AttributeError):
            value = None
        if isinstance(value, int) and value > 1:
            return min(value, limit)
    return min(DEFAULT_MAX_LENGTH, limit)


class _LogitsOnly:
    """Factory for a module that maps positional tensors to ``logits`` only (no cache, no hidden states)."""

    @staticmethod
    def wrap(model: Any, input_names: list[str]) -> Any:
        import torch

        extra: dict[str, Any] = {"return_dict": True}
        if "use_cache" in inspect.signature(model.forward).parameters:
            extra["use_cache"] = False

        class LogitsOnly(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *tensors: Any) -> Any:
                return self.model(**dict(zip(input_names, tensors, strict=True)), **extra).logits

        return LogitsOnly().eval()


def export_onnx(exportable: ExportableModel, sample: dict[str, np.ndarray], path: Path, opset: int) -> Path:
    """Export ``logits`` with dynamic batch and sequence axes using the legacy TorchScript exporter.

    Args:
        exportable: Loaded model.
        sample: Real tokenized inputs used for tracing; should contain padding so masking is traced.
        path: Output ``.onnx`` file.
        opset: ONNX opset version.

    Raises:
        ExportError: The exporter or the ONNX checker failed.

    """
    wrapper = _LogitsOnly.wrap(exportable.model, exportable.input_names)
    axes = {name: {0: "batch", 1: "sequence"} for name in exportable.input_names}
    return export_graph(wrapper, sample, exportable.input_names, axes, path, opset, exportable.resolved.path)


def export_graph(module: Any, sample: dict[str, np.ndarray], input_names: list[str] | tuple[str, ...],
                 dynamic_axes: dict[str, dict[int, str]], path: Path, opset: int, where: Path) -> Path:
    """Trace ``module`` (positional inputs in ``input_names`` order, returns logits) to ONNX and check the file.

    Args:
        module: A ``torch.nn.Module`` in eval mode that maps the input tensors to the ``logits`` tensor.
        sample: Real inputs used for tracing, by input name.
        input_names: Graph input names, in the module's argument order.
        dynamic_axes: Dynamic axes per input; the output's batch axis is always dynamic.
        path: Output ``.onnx`` file.
        opset: ONNX opset version.
        where: Model directory named in error messages.

    Raises:
        ExportError: The exporter or the ONNX checker failed.

    """
    import onnx
    import torch

    args = tuple(torch.from_numpy(sample[name]) for name in input_names)
    axes = {**dynamic_axes, OUTPUT_NAME: {0: "batch"}}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # Tracer warnings about Python-level shape checks are expected; the parity gate runs
            # several batch sizes (and lengths) to prove the traced graph is shape-generic.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(path), input_names=list(input_names), output_names=[OUTPUT_NAME],
                dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        onnx.checker.check_model(str(path))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"{where}: torch.onnx.export failed ({type(exc).__name__}: {first})") from exc
    return path


def keep_residual_adds_unfused(model: Any) -> int:
    """Rewrite residual ``Add -> LayerNormalization`` pairs to ``Sum -> LayerNormalization`` (in place).

    Why: ONNX Runtime 1.32's CPU ``SkipLayerNormalization`` kernel, which its session optimizer fuses
    from ``Add -> LayerNormalization``, measured 9.7 ms against 1.7 ms for ``Add`` + ``LayerNormalization``
    on a 32x128x384 tensor; it cost ~12% of int8 BERT inference. ``Sum`` of two inputs is the same
    arithmetic but does not match that fusion, and the change lives in the graph, so it holds in every
    runtime that loads the file (Triton included). Only for CPU targets: on GPU the fused kernel is fast.

    Returns:
        Number of rewritten nodes.

    """
    initializers = {init.name for init in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        if initializers.intersection(node.input):
            continue  # a bias add, not a residual connection
        users = consumers.get(node.output[0], [])
        if users and all(user.op_type == "LayerNormalization" for user in users):
            node.op_type = "Sum"
            rewritten += 1
    return rewritten


TRIM_PREFIX = "transferkit_trim/"


def trim_trailing_padding(model: Any, input_names: list[str] | tuple[str, ...]) -> bool:
    """Make the graph drop the batch's trailing all-padding columns before the encoder runs (in place).

    Why: clients and batchers often pad every request to ``max_length`` (128), while real sentences are
    a fraction of that; every encoder op then works on padding that the attention mask throws away. The
    graph now slices all ``[batch, sequence]`` inputs to ``1 + the last column where any attention_mask
    value is 1`` (at least 1). For sequence-level outputs this is exact: padded key positions get zero
    attention weight, pooling ignores them, and position ids of the kept columns do not change. Left
    padding leaves nothing to trim (the last column is real), so the rewrite is a no-op there. ONNX
    Runtime has no CPU option for this (its packed-sequence ops are CUDA only).

    Args:
        model: ``onnx.ModelProto`` whose inputs include ``attention_mask`` and whose outputs have no
            sequence axis.
        input_names: The graph's ``[batch, sequence]`` inputs.

    Returns:
        Whether the graph was rewritten (False without an ``attention_mask`` input or when already trimmed).

    """
    from onnx import TensorProto, helper

    graph = model.graph
    graph_inputs = {value.name for value in graph.input}
    if "attention_mask" not in graph_inputs or any(node.name.startswith(TRIM_PREFIX) for node in graph.node):
        return False
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 17)
    p = TRIM_PREFIX

    def name(suffix: str) -> str:
        return p + suffix

    def reduce_max(source: str, out: str, keepdims: int) -> Any:
        if opset >= 18:
            return helper.make_node("ReduceMax", [source, name("axis0")], [out], name=out, keepdims=keepdims)
        return helper.make_node("ReduceMax", [source], [out], name=out, axes=[0], keepdims=keepdims)

    constants = [
        helper.make_node("Constant", [], [name(n)], name=name(n),
                         value=helper.make_tensor(name(n), TensorProto.INT64, dims, values))
        for n, dims, values in (("one", [], [1]), ("one_1d", [1], [1]), ("zero_1d", [1], [0]),
                                ("axis1", [1], [1]), ("axis0", [1], [0]))
    ]
    nodes = [
        *constants,
        helper.make_node("Cast", ["attention_mask"], [name("mask")], name=name("mask"), to=TensorProto.INT64),
        helper.make_node("Shape", [name("mask")], [name("shape")], name=name("shape")),
        helper.make_node("Gather", [name("shape"), name("one")], [name("length")], name=name("length"), axis=0),
        helper.make_node("Add", [name("length"), name("one")], [name("limit")], name=name("limit")),
        helper.make_node("Range", [name("one"), name("limit"), name("one")], [name("positions")],
                         name=name("positions")),
        reduce_max(name("mask"), name("used_columns"), keepdims=0),
        helper.make_node("Mul", [name("used_columns"), name("positions")], [name("used_positions")],
                         name=name("used_positions")),
        reduce_max(name("used_positions"), name("last_used"), keepdims=1),
        helper.make_node("Max", [name("last_used"), name("one_1d")], [name("keep")], name=name("keep")),
    ]
    renamed = {}
    for input_name in input_names:
        if input_name not in graph_inputs:
            continue
        renamed[input_name] = name(f"{input_name}_trimmed")
        nodes.append(helper.make_node("Slice", [input_name, name("zero_1d"), name("keep"), name("axis1")],
                                      [renamed[input_name]], name=renamed[input_name]))
    for node in graph.node:
        for index, source in enumerate(node.input):
            if source in renamed:
                node.input[index] = renamed[source]
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *existing])
    return True
