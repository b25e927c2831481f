"""Build a Triton model repository from an export directory (``io_spec.json`` + ONNX graphs).

For a model published as ``NAME`` the repository holds one ensemble and its composing models::

    NAME/                      ensemble: clients send raw strings (text) or encoded images (image models),
      config.pbtxt             get logits, probabilities, label
      configs/local.pbtxt      text models, local: the same interface in one python model (local_text.py)
      labels.txt               classification extension (``label_filename``)
      <v>/ENSEMBLE.txt         placeholder: object stores have no empty folders
      <v>/model.py ...         text models: code and tokenizer of the local fast path (the ensemble ignores them)
    NAME_tokenizer/            python backend, ``tokenizers`` library (text models only)
      config.pbtxt
      <v>/model.py  <v>/tokenizer/tokenizer.json ...
    NAME_preprocess/           python backend, Pillow + numpy: image bytes -> pixel_values (image models only)
      config.pbtxt
      <v>/model.py  <v>/preprocessor.json
    NAME_onnx/                 the exported graph
      config.pbtxt             production: platform onnxruntime_onnx, KIND_GPU (or KIND_CPU), TensorRT
      configs/local.pbtxt      local: python backend running the same model.onnx with ONNX Runtime on CPU
      labels.txt
      <v>/model.onnx  <v>/model.py
    NAME_postprocess/          python backend: softmax + label names
      config.pbtxt  labels.txt  <v>/model.py

A production Triton reads ``config.pbtxt``; the local server is started with
``--model-config-name=local`` and reads ``configs/local.pbtxt`` where it exists (falling back to
``config.pbtxt`` elsewhere), so one repository serves both worlds. Configs are built as
``model_config_pb2.ModelConfig`` messages and written in protobuf text format, so every file parses.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError, ExportError, ServingError
from transferkit.export.io_spec import IOSpec, TensorSpec
from transferkit.io import atomic_output_dir
from transferkit.serve.triton_config import (  # noqa: F401 - re-exported: the repository's public names
    IMAGE_INPUT,
    LABEL_OUTPUT,
    LABELS_FILE,
    PREPROCESSOR_FILE,
    PROBABILITIES_OUTPUT,
    TEXT_INPUT,
    TEXT_PAIR_INPUT,
    TRITON_DTYPES,
    ensemble_config,
    image_preprocess_config,
    onnx_local_config,
    onnx_production_config,
    parse_pbtxt,
    postprocess_config,
    to_pbtxt,
    tokenizer_config,
)
from transferkit.tasks import find_task

logger = logging.getLogger(__name__)

LOCAL_CONFIG_NAME = "local"
ENSEMBLE_PLACEHOLDER = "ENSEMBLE.txt"
_MODELS_PKG = Path(__file__).with_name("triton_models")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_TOKENIZER_FIELDS = ("input_ids", "attention_mask", "token_type_ids")


def validate_model_name(name: str, *, field_name: str = "name") -> str:
    """Return ``name`` if it is a safe Triton model name.

    Raises:
        ConfigError: Empty, a path (``/``, backslash, ``..``), or characters outside ``[A-Za-z0-9_.-]``.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{field_name}: a model name is required")
    if "/" in name or "\\" in name or ".." in name:
        raise ConfigError(f"{field_name}: {name!r} must not contain path separators or '..'")
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"{field_name}: {name!r} must be 1-63 characters of letters, digits, '_', '.', '-' "
            "starting with a letter or digit"
        )
    return name


@dataclass
class RepositoryOptions:
    """How the repository's configs are generated (production and local variants).

    Attributes:
        max_batch_size: Largest batch Triton forms (``max_batch_size``).
        preferred_batch_sizes: Dynamic batcher's preferred sizes (each <= ``max_batch_size``).
        max_queue_delay_us: How long the dynamic batcher of the graph model waits to fill a batch. A
            request alone pays all of it (the 20 ms often seen costs 20 ms at concurrency 1). 0 still
            batches whatever queued while the instances were busy; raise it on GPUs, where bigger batches
            are nearly free. The python helper steps (tokenizer, preprocess, postprocess) never wait:
            their work is tiny and an ensemble would pay their delays in series.
        instance_kind: ``"gpu"`` (KIND_GPU, production default) or ``"cpu"`` (KIND_CPU clusters).
        instance_count: Model instances per device in production.
        tensorrt_fp16: Add the TensorRT execution accelerator with FP16 precision (GPU only).
        variant: Graph variant from the export (``fp32``, ``int8``, ``qdq``, ``fp16``); default is the
            export's recommended variant.
        local_threads: ONNX Runtime intra-op threads per instance of the local python-backend variant.
        local_instance_count: Instances of the local python-backend variant. Two single-threaded
            instances beat one two-threaded instance on small text batches (measured by
            ``benchmarks/serving.py``): while one pads and runs a batch, the other takes the next.
        versions_to_serve: Version policy: how many of the newest versions Triton keeps loaded.
        pad_to_multiple_of: Tokenizer pads each request to a multiple of this, so similar lengths
            share a shape and batch on backends without ragged batching.
        local_fast_path: Text models: the local config of the entry model runs tokenizer, graph and
            postprocess in one python model instead of the ensemble's three (see ``local_text.py``).
        monitor_url: Base URL of a ``transferkit monitor`` service. With ``monitor_sample_rate`` > 0 the local
            entry model (the text fast path; for image models a one-model local config written by the task's
            ``write_serving_monitor`` hook) posts that fraction of request items (pooled embedding, prediction,
            confidence, input features; in the background, never failing a request) to
            ``<monitor_url>/v1/records``. In KServe mode it also receives the payload logger's events.
        monitor_sample_rate: Fraction of request items sent to the monitor (0: none; custom metrics of every
            request are reported either way).
        serving_metrics: The local fast path reports every request's predictions, confidences and token lengths
            as Triton custom metrics (off: only Triton's built-in metrics).
        generation_concurrency: Generative models: requests generated at once per instance (worker threads, one
            KV cache each); ``local_threads`` is each generation's intra-op thread count.
    """

    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = (4, 8, 16)
    max_queue_delay_us: int = 0
    instance_kind: str = "gpu"
    instance_count: int = 1
    tensorrt_fp16: bool = False
    variant: str | None = None
    local_threads: int = 1
    local_instance_count: int = 2
    versions_to_serve: int = 1
    pad_to_multiple_of: int = 8
    local_fast_path: bool = True
    monitor_url: str = ""
    monitor_sample_rate: float = 0.0
    serving_metrics: bool = True
    generation_concurrency: int = 4

    def __post_init__(self) -> None:
        self.preferred_batch_sizes = tuple(int(s) for s in self.preferred_batch_sizes)
        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size: must be >= 1, got {self.max_batch_size}")
        bad = [s for s in self.preferred_batch_sizes if s < 1 or s > self.max_batch_size]
        if bad:
            raise ConfigError(f"preferred_batch_sizes: {bad} outside 1..max_batch_size ({self.max_batch_size})")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"max_queue_delay_us: must be >= 0, got {self.max_queue_delay_us}")
        if self.instance_kind not in ("gpu", "cpu"):
            raise ConfigError(f"instance_kind: expected 'gpu' or 'cpu', got {self.instance_kind!r}")
        for name in ("instance_count", "local_threads", "local_instance_count", "versions_to_serve",
                     "pad_to_multiple_of", "generation_concurrency"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= float(self.monitor_sample_rate) <= 1.0:
            raise ConfigError(f"monitor_sample_rate: expected a fraction in [0, 1], got {self.monitor_sample_rate}")
        if self.monitor_sample_rate > 0 and not self.monitor_url.startswith(("http://", "https://")):
            raise ConfigError(f"monitor_url: expected an http(s):// URL with monitor_sample_rate > 0, got "
                              f"{self.monitor_url!r}")
        if self.tensorrt_fp16 and self.instance_kind != "gpu":
            raise ConfigError("tensorrt_fp16: the TensorRT accelerator needs instance_kind='gpu'")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return asdict(self)


@dataclass
class ExportedModel:
    """A validated export directory."""

    directory: Path
    spec: IOSpec
    variant: str
    onnx_path: Path
    tokenizer_dir: Path | None
    text_pair: bool = False
    image_preprocessing: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        """``text`` (tokenizer in front), ``image`` (image preprocessing in front) or ``tensor`` (neither)."""
        if self.tokenizer_dir is not None:
            return "text"
        return "image" if self.image_preprocessing is not None else "tensor"

    @property
    def image_size(self) -> int:
        """Height and width of ``pixel_values`` (image models)."""
        if self.image_preprocessing is None:
            raise ServingError(f"{self.directory}: not an image model")
        return int(self.image_preprocessing["image_size"])

    @property
    def text_inputs(self) -> list[str]:
        """Raw-string inputs of the ensemble (``text``, plus ``text_pair`` for sentence-pair models)."""
        return [TEXT_INPUT, TEXT_PAIR_INPUT] if self.text_pair else [TEXT_INPUT]

    @property
    def chunked(self) -> bool:
        """Whether texts are split into windows whose logits the postprocess aggregates (``text_inputs``)."""
        return self.kind == "text" and self.spec.text_inputs.get("long_documents") == "chunk"

    @property
    def labels(self) -> list[str]:
        """Class names, index = class id."""
        return list(self.spec.labels)

    @property
    def logits(self) -> TensorSpec:
        """The classifier output (first output of the graph)."""
        return self.spec.outputs[0]

    @property
    def format_version(self) -> str:
        """What the model registry records as the model format version (the ONNX opset)."""
        return str(self.spec.opset)

    def model_names(self, name: str) -> list[str]:
        """The deployment's models in load order (entry point last), see :func:`model_names`."""
        return model_names(name, kind=self.kind)

    def endpoint(self, url: str, name: str) -> str:
        """Where clients send inputs (the ensemble's ``infer``)."""
        return f"{url.rstrip('/')}/v2/models/{name}/infer"

    def write_tree(self, name: str, root: Path, version: int, options: RepositoryOptions) -> list[str]:
        """Write every model of deployment ``name`` with one version into ``root`` (:func:`write_model_tree`)."""
        return write_model_tree(self, name, root, version, options)


def load_export(export_dir: str | Path, *, variant: str | None = None, check_onnx: bool = True) -> ExportedModel:
    """Validate an export directory: ``io_spec.json``, the ONNX graph, labels and tokenizer files.

    Args:
        export_dir: Directory written by ``transferkit export``.
        variant: Graph variant to serve; default is the recommended one.
        check_onnx: Load the graph with ONNX Runtime and compare its input/output names to the spec.

    Raises:
        ServingError: Anything is missing or does not load.
    """
    directory = Path(export_dir)
    if not directory.is_dir():
        raise ServingError(f"{directory}: export directory does not exist")
    try:
        spec = IOSpec.load(directory)
    except ExportError as exc:
        raise ServingError(str(exc)) from exc
    chosen = variant or spec.recommended_variant
    if chosen not in spec.variants:
        raise ServingError(f"{directory / 'io_spec.json'}: variant {chosen!r} not among {sorted(spec.variants)}")
    onnx_path = directory / spec.variants[chosen].file
    if not onnx_path.is_file():
        raise ServingError(f"{onnx_path}: missing (listed as variant {chosen!r} in io_spec.json)")
    if not spec.labels:
        raise ServingError(f"{directory / 'io_spec.json'}: labels: a classifier needs at least one label")
    tokenizer_dir = None
    if spec.tokenizer_dir:
        tokenizer_dir = directory / spec.tokenizer_dir
        if not (tokenizer_dir / "tokenizer.json").is_file():
            raise ServingError(f"{tokenizer_dir / 'tokenizer.json'}: missing (a fast tokenizer file is required)")
        unknown = [t.name for t in spec.inputs if t.name not in _TOKENIZER_FIELDS]
        if unknown:
            raise ServingError(
                f"{directory / 'io_spec.json'}: inputs {unknown} cannot be produced by the tokenizer "
                f"(expected a subset of {list(_TOKENIZER_FIELDS)})"
            )
    for tensor in [*spec.inputs, *spec.outputs]:
        if tensor.dtype not in TRITON_DTYPES:
            raise ServingError(f"{directory / 'io_spec.json'}: tensor {tensor.name!r} has unsupported dtype "
                               f"{tensor.dtype!r} (expected one of {sorted(TRITON_DTYPES)})")
    text_pair = bool(tokenizer_dir is not None and spec.preprocessing.get("text_pair"))
    image = None if tokenizer_dir is not None else _image_preprocessing(directory, spec)
    exported = ExportedModel(directory, spec, chosen, onnx_path, tokenizer_dir, text_pair, image)
    if check_onnx:
        check_onnx_graph(exported)
    return exported


def _image_preprocessing(directory: Path, spec: IOSpec) -> dict[str, Any] | None:
    """The validated ``ImagePreprocessConfig`` dict of an image export, or None for other exports.

    ``io_spec.json``'s ``preprocessing`` (``kind: image``) wins; ``preprocessor.json`` is the fallback.

    Raises:
        ServingError: An image export whose preprocessing is missing or invalid, or whose single input
            is not a ``[batch, 3, S, S]`` float tensor matching ``image_size``.
    """
    where = directory / "io_spec.json"
    declared = spec.preprocessing if spec.preprocessing.get("kind") == "image" else None
    if declared is None and getattr(find_task(spec.task), "preprocessing_kind", None) != "image":
        return None
    source = f"{where}: preprocessing"
    if declared is None:
        file = directory / PREPROCESSOR_FILE
        if not file.is_file():
            raise ServingError(f"{where}: task {spec.task!r} needs image preprocessing settings "
                               f"(io_spec preprocessing with kind 'image', or {PREPROCESSOR_FILE})")
        try:
            declared = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ServingError(f"{file}: unreadable preprocessing settings ({exc})") from exc
        source = str(file)
    from transferkit.data.transforms import ImagePreprocessConfig  # imports torch: image exports only

    try:
        config = ImagePreprocessConfig.from_dict(declared, source)
    except ConfigError as exc:
        raise ServingError(str(exc)) from exc
    if len(spec.inputs) != 1:
        raise ServingError(f"{where}: inputs: an image model takes exactly one input (pixel_values), got "
                           f"{[t.name for t in spec.inputs]}")
    tensor = spec.inputs[0]
    size = config.image_size
    if tensor.dtype not in ("float32", "float16") or len(tensor.dims) != 4 or tensor.dims[1] not in (3, -1):
        raise ServingError(f"{where}: inputs[0] {tensor.name!r}: expected float32 (or float16) "
                           f"[batch, 3, {size}, {size}], got {tensor.dtype} {tensor.dims}")
    if any(d not in (size, -1) for d in tensor.dims[2:]):
        raise ServingError(f"{where}: inputs[0] {tensor.name!r} dims {tensor.dims} do not match the preprocessing "
                           f"image_size {size}")
    return config.to_dict()


def check_onnx_graph(exported: ExportedModel) -> None:
    """Load the graph with ONNX Runtime and check that the spec's tensor names exist.

    Raises:
        ServingError: The file does not load or its names differ from ``io_spec.json``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(exported.onnx_path), sess_options=options,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ServingError(f"{exported.onnx_path}: ONNX Runtime cannot load the graph ({message})") from exc
    graph_inputs = {i.name for i in session.get_inputs()}
    graph_outputs = {o.name for o in session.get_outputs()}
    missing_in = [t.name for t in exported.spec.inputs if t.name not in graph_inputs]
    missing_out = [t.name for t in exported.spec.outputs if t.name not in graph_outputs]
    if missing_in or missing_out:
        raise ServingError(
            f"{exported.onnx_path}: graph lacks io_spec tensors inputs={missing_in} outputs={missing_out} "
            f"(graph has inputs {sorted(graph_inputs)}, outputs {sorted(graph_outputs)})"
        )


@dataclass
class ModelBundle:
    """A built repository tree holding one version of every model of a deployment."""

    name: str
    root: Path
    version: int
    models: list[str] = field(default_factory=list)  # composing models first, entry point last

    @property
    def entry_model(self) -> str:
        """The model clients call (the ensemble)."""
        return self.models[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return {"name": self.name, "root": str(self.root), "version": self.version, "models": self.models}


_FRONT_MODEL = {"text": "tokenizer", "image": "preprocess"}


def model_names(name: str, *, kind: str) -> list[str]:
    """Names of the models of a deployment in load order (entry point last).

    Args:
        name: Public model name.
        kind: :attr:`ExportedModel.kind` (``text``, ``image`` or ``tensor``).
    """
    composing = [f"{name}_{_FRONT_MODEL[kind]}"] if kind in _FRONT_MODEL else []
    return [*composing, f"{name}_onnx", f"{name}_postprocess", name]


def _pad_id(tokenizer_dir: Path) -> int:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    padding = tokenizer.padding
    if padding and "pad_id" in padding:
        return int(padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<|endoftext|>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    return 0


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_model_tree(exported: ExportedModel, name: str, root: Path, version: int,
                     options: RepositoryOptions) -> list[str]:
    """Write every model folder of deployment ``name`` with one version into ``root`` (no atomicity).

    Returns:
        Model names, entry point last.
    """
    validate_model_name(name)
    if version < 1:
        raise ConfigError(f"version: must be >= 1, got {version}")
    text = exported.kind == "text"
    names = model_names(name, kind=exported.kind)
    labels = "".join(f"{label}\n" for label in exported.labels)
    v = str(version)

    if text:
        assert exported.tokenizer_dir is not None
        tok = root / f"{name}_tokenizer"
        pad_id = _pad_id(exported.tokenizer_dir)
        _write(tok / "config.pbtxt", to_pbtxt(tokenizer_config(tok.name, exported, options, pad_id)))
        (tok / v).mkdir(parents=True, exist_ok=True)
        shutil.copy2(_MODELS_PKG / "tokenizer_model.py", tok / v / "model.py")
        shutil.copytree(exported.tokenizer_dir, tok / v / "tokenizer", dirs_exist_ok=True)
        if options.local_fast_path:
            from transferkit.serve.local_text import write_text_entry_local  # imports this module

            write_text_entry_local(exported, name, root, version, options, pad_id)

    if exported.kind == "image":
        assert exported.image_preprocessing is not None
        pre = root / f"{name}_preprocess"
        _write(pre / "config.pbtxt", to_pbtxt(image_preprocess_config(pre.name, exported, options)))
        _write(pre / v / PREPROCESSOR_FILE, json.dumps(exported.image_preprocessing, indent=2) + "\n")
        shutil.copy2(_MODELS_PKG / "image_preprocess_model.py", pre / v / "model.py")

    onnx = root / f"{name}_onnx"
    _write(onnx / "config.pbtxt", to_pbtxt(onnx_production_config(onnx.name, exported, options)))
    _write(onnx / "configs" / f"{LOCAL_CONFIG_NAME}.pbtxt", to_pbtxt(onnx_local_config(onnx.name, exported, options)))
    _write(onnx / LABELS_FILE, labels)
    (onnx / v).mkdir(parents=True, exist_ok=True)
    shutil.copy2(exported.onnx_path, onnx / v / "model.onnx")
    shutil.copy2(_MODELS_PKG / "onnx_model.py", onnx / v / "model.py")

    post = root / f"{name}_postprocess"
    _write(post / "config.pbtxt", to_pbtxt(postprocess_config(post.name, exported, options)))
    _write(post / LABELS_FILE, labels)
    (post / v).mkdir(parents=True, exist_ok=True)
    shutil.copy2(_MODELS_PKG / "postprocess_model.py", post / v / "model.py")
    shutil.copy2(_MODELS_PKG / "monitor_client.py", post / v / "monitor_client.py")

    ens = root / name
    _write(ens / "config.pbtxt", to_pbtxt(ensemble_config(name, exported, options)))
    _write(ens / LABELS_FILE, labels)
    front = f"{names[0]} -> " if len(names) == 4 else ""
    _write(ens / v / ENSEMBLE_PLACEHOLDER,
           f"Ensemble {name} version {v}: {front}{name}_onnx -> {name}_postprocess (no files needed).\n")
    # The drift-monitoring baseline travels with the version: the monitor beside Triton reads it from here.
    if (exported.directory / "monitor_baseline").is_dir():
        shutil.copytree(exported.directory / "monitor_baseline", ens / v / "monitor_baseline", dirs_exist_ok=True)
    task = find_task(exported.spec.task)
    if options.monitor_sample_rate > 0 and task is not None:
        task.write_serving_monitor(exported, name, root, version, options)
    return names


def build_model_repository(export_dir: str | Path, name: str, out_dir: str | Path, *, version: int = 1,
                           options: RepositoryOptions | None = None) -> ModelBundle:
    """Build a complete model repository for one deployment (written atomically).

    Args:
        export_dir: Export directory (``io_spec.json``, ONNX graphs, labels, tokenizer or image preprocessing).
        name: Public model name (the ensemble); composing models get suffixes.
        out_dir: Repository folder to create (replaced if it exists).
        version: Version number of every model folder.
        options: Config generation options.

    Returns:
        The bundle describing the written tree.

    Raises:
        ConfigError: Bad name or options.
        ServingError: The export directory is incomplete or its graph does not load.
    """
    validate_model_name(name)
    options = options or RepositoryOptions()
    exported = load_export(export_dir, variant=options.variant)
    with atomic_output_dir(out_dir) as tmp:
        names = write_model_tree(exported, name, tmp, version, options)
    logger.info("Built Triton repository %s (models %s, version %d)", out_dir, ", ".join(names), version)
    return ModelBundle(name=name, root=Path(out_dir), version=version, models=names)
