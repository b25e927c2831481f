"""LoRA adapters of a generative model as ONNX Runtime GenAI adapter files over one base graph.

The ONNX Runtime GenAI model builder (0.18) takes a PEFT adapter (``--extra_options adapter_path=DIR``) but bakes
it into the graph: its LoRA ``MatMul`` weights (``...lora_A.MatMul.weight``, ``...lora_B.MatMul.weight``, B already
scaled by alpha / r) become initializers. It writes no adapter file. :func:`build_adapter_variant` turns that into
the multi-adapter layout ONNX Runtime GenAI serves:

- ``model.onnx``: the builder's LoRA graph with every LoRA weight made a graph input whose default initializer is
  A, and zeros for B, so without an active adapter the model is exactly the base model;
- ``adapters/<name>.onnx_adapter``: for each adapter, its A and B weights as laid out by the builder (one builder
  run per adapter), written with ``onnxruntime.AdapterFormat``; a request activates one by name
  (``Generator.set_active_adapter``).

fp32 only: in an int4 build the LoRA ``MatMul`` weights are quantized into ``MatMulNBits`` blocks, which an adapter
cannot override. Every adapter must target the same modules with the same rank (the graph's input shapes).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transferkit.errors import ExportError

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapters"
ADAPTER_SUFFIX = ".onnx_adapter"
# The variant `transferkit export --adapter-variant NAME` adds to a LoRA-trained model's export.
ADAPTER_VARIANT = "lora"
# Where training saves a LoRA model's unmerged PEFT adapter (transferkit.train.lora.ADAPTER_DIR).
TRAINED_ADAPTER_DIR = "adapter"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_LORA_MARK = (".lora_A.", ".lora_B.")


def valid_adapter_name(name: str) -> bool:
    """Whether ``name`` can name an adapter file (1-63 letters, digits, ``_``, ``.``, ``-``)."""
    return bool(_NAME_RE.match(name))


def _adapter_shape(name: str, adapter_dir: Path) -> tuple[Any, Any]:
    path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: adapter {name!r} has no readable PEFT adapter_config.json "
                          f"({type(exc).__name__})") from None
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ExportError(f"{path}: peft_type {config.get('peft_type')!r}; adapter {name!r} must be a LoRA adapter")
    targets = config.get("target_modules")
    return int(config.get("r", 0)), sorted(targets) if isinstance(targets, list) else targets


def _build(model_dir: Path, adapter_dir: Path, out: Path, cache: Path) -> None:
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir), "-o", str(out),
               "-p", "fp32", "-e", "cpu", "-c", str(cache), "--extra_options", f"adapter_path={adapter_dir}"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not (out / "genai_config.json").is_file():
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        raise ExportError(f"{adapter_dir}: the ONNX Runtime GenAI model builder failed for the LoRA build: "
                          f"{lines[-1] if lines else 'no output'}")


def _lora_weights(graph_dir: Path) -> dict[str, Any]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(graph_dir / "model.onnx"))
    return {init.name: numpy_helper.to_array(init).copy() for init in model.graph.initializer
            if any(mark in init.name for mark in _LORA_MARK)}


def build_adapter_variant(model_dir: Path | str, adapters: Mapping[str, Path | str], out: Path | str) -> list[str]:
    """Build an fp32 base graph whose LoRA weights are inputs, plus one adapter file per named adapter.

    Args:
        model_dir: The base causal LM (Hugging Face directory) the adapters were trained on.
        adapters: Adapter name -> PEFT LoRA adapter directory (``adapter_config.json`` + weights).
        out: Folder to write (``model.onnx``, ``genai_config.json``, tokenizer, ``adapters/*.onnx_adapter``).

    Returns:
        The adapter names written.

    Raises:
        ExportError: No adapters, a bad name, a non-LoRA adapter, adapters of different rank or target modules,
            or a builder failure.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    if not adapters:
        raise ExportError("adapters: at least one LoRA adapter directory is required")
    bad = [n for n in adapters if not _NAME_RE.match(n)]
    if bad:
        raise ExportError(f"adapters: names {bad} must be 1-63 letters, digits, '_', '.', '-'")
    dirs = {name: Path(path) for name, path in adapters.items()}
    shapes = {name: _adapter_shape(name, path) for name, path in dirs.items()}
    first = next(iter(dirs))
    for name, shape in shapes.items():
        if shape != shapes[first]:
            raise ExportError(f"{dirs[name] / 'adapter_config.json'}: r / target_modules {shape} differ from adapter "
                              f"{first!r} {shapes[first]}; adapters over one base graph need the same rank and modules")
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="tk-adapters-") as tmp:
        cache = Path(tmp) / "cache"
        weights: dict[str, dict[str, Any]] = {}
        for name, path in dirs.items():
            build = Path(tmp) / name
            _build(Path(model_dir), path, build, cache)
            weights[name] = _lora_weights(build)
            if not weights[name]:
                raise ExportError(f"{path}: the builder put no LoRA weights into the graph (unsupported targets?)")
        base = Path(tmp) / first
        model = onnx.load(str(base / "model.onnx"))
        for init in model.graph.initializer:
            if init.name in weights[first]:
                array = weights[first][init.name]
                default = np.zeros_like(array) if ".lora_B." in init.name else array
                init.CopyFrom(numpy_helper.from_array(default, init.name))
                model.graph.input.append(helper.make_tensor_value_info(init.name, onnx.TensorProto.FLOAT,
                                                                       list(array.shape)))
        staging = Path(tmp) / "variant"
        shutil.copytree(base, staging, ignore=shutil.ignore_patterns("model.onnx", "model.onnx.data"))
        onnx.save(model, str(staging / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
        (staging / ADAPTER_DIR).mkdir()
        for name, params in weights.items():
            if {k: v.shape for k, v in params.items()} != {k: v.shape for k, v in weights[first].items()}:
                raise ExportError(f"{dirs[name]}: its LoRA weights differ in names or shapes from adapter {first!r}")
            adapter = ort.AdapterFormat()
            adapter.set_adapter_version(1)
            adapter.set_model_version(1)
            adapter.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in params.items()})
            adapter.export_adapter(str(staging / ADAPTER_DIR / f"{name}{ADAPTER_SUFFIX}"))
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(out))
    logger.info("Built %s: fp32 base with %d LoRA weights as inputs, adapters %s", out, len(weights[first]),
                ", ".join(dirs))
    return list(dirs)


def export_adapter_variant(model_dir: Path | str, name: str, out: Path | str, *, allow_pickle: bool = False,
                           trust_remote_code: bool = False) -> Path:
    """Build the per-request adapter variant of a LoRA-trained model (its base graph + its adapter file).

    The base model the adapter was trained on becomes the fp32 graph of :func:`build_adapter_variant`, and the
    model's own ``adapter/`` its adapter file ``name``.

    Args:
        model_dir: A model directory trained with ``--strategy lora`` (merged weights + ``adapter/``).
        name: The adapter's name (requests activate it with ``adapter``).
        out: Folder to write.
        allow_pickle: Accept a base model with pickle weights.
        trust_remote_code: Accept a base model with custom code.

    Returns:
        The base model directory the adapter was trained on.

    Raises:
        ExportError: No ``adapter/`` (not a LoRA-trained model), its base does not resolve, or a builder failure.
    """
    from transferkit.errors import TransferkitError
    from transferkit.models.catalog import resolve_model

    adapter = Path(model_dir) / TRAINED_ADAPTER_DIR
    config_path = adapter / "adapter_config.json"
    try:
        base_ref = json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise ExportError(f"{config_path}: no readable PEFT adapter config ({type(exc).__name__}); adapter_variant "
                          "needs a model trained with --strategy lora") from None
    if not base_ref:
        raise ExportError(f"{config_path}: base_model_name_or_path is empty; the base the adapter was trained on "
                          "is unknown")
    try:
        base = Path(resolve_model(str(base_ref), allow_pickle=allow_pickle, trust_remote_code=trust_remote_code).path)
    except TransferkitError as exc:
        raise ExportError(f"{config_path}: base model {base_ref!r} does not resolve: {str(exc).splitlines()[0]}") \
            from None
    build_adapter_variant(base, {name: adapter}, out)
    return base
