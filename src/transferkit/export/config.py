"""Configuration and result of the export step (``transferkit export`` / the ``onnx_quantize`` component)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError
from transferkit.export.int8 import CPU_ISAS
from transferkit.options import option
from transferkit.tasks import DEFAULT_TASK, get_task

TARGETS = ("cpu", "gpu")
ON_DROP = ("fallback", "fail")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
GPU_PREFERENCES = ("fp16", "qdq")
INT4_RECIPE_NAMES = ("rtn", "rtn-int8-head", "k-quant-mixed")  # transferkit.export.generative.INT4_RECIPES
# torch.onnx's legacy exporter emits LayerNormalization natively from opset 17 (fewer, faster nodes);
# 20 is the newest opset it supports.
MIN_OPSET, MAX_OPSET = 14, 20
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class VariantPlan:
    """Which graph variants an export builds and how the recommended one is chosen.

    Attributes:
        build: Variants quantized/converted from fp32, gated and measured, in build order.
        preferences: Recommendation order among the variants the accuracy gate keeps; ends with ``fp32``.
            Built variants missing from it are measured for comparison only: they never become the
            recommendation, do not count for ``passed`` and do not trigger ``on_drop='fail'``.
    """

    build: tuple[str, ...]
    preferences: tuple[str, ...]

    @property
    def candidates(self) -> tuple[str, ...]:
        """Built variants that can be recommended (the ones ``passed`` and ``on_drop`` look at)."""
        return tuple(name for name in self.preferences if name in self.build)


def variant_plan(task: str, target: str, gpu_prefer: str = "fp16") -> VariantPlan:
    """The variants built for ``task`` on ``target`` and their recommendation order.

    Args:
        task: A registered task name (its ``export_variants`` and ``export_cpu_preference``).
        target: ``cpu`` or ``gpu``.
        gpu_prefer: First choice on gpu (``fp16`` or ``qdq``).

    Returns:
        The plan; text on cpu builds dynamic int8, image models on cpu static QDQ int8 (plus dynamic int8
        measured for comparison), every task on gpu fp16 and QDQ int8.

    """
    spec = get_task(task)
    if target == "gpu":
        return VariantPlan(spec.export_variants["gpu"],
                           (gpu_prefer, *(v for v in ("fp16", "qdq") if v != gpu_prefer), "fp32"))
    return VariantPlan(spec.export_variants["cpu"], (spec.export_cpu_preference, "fp32"))


@dataclass
class ExportConfig:
    """Options of the export step, each declared once with its CLI flag and help (:mod:`transferkit.options`)."""

    model_dir: Path = field(metadata=option(
        "--model", help="Model directory from `transferkit train` (or a catalog name whose checkpoint has a "
        "classification head)."))
    data_dir: Path = field(metadata=option(
        "--data", help="Prepared dataset directory (validation: parity, test: accuracy, train: calibration)."))
    out_dir: Path = field(metadata=option("--out", help="Export directory to write (replaced atomically on success)."))
    target: str = field(default="cpu", metadata=option(
        "--target", help="cpu (text: dynamic int8; images: static QDQ int8, dynamic int8 measured for "
        "comparison) | gpu (static QDQ int8 + fp16)."))
    opset: int = field(default=DEFAULT_OPSET, metadata=option(
        "--opset", kfp_unset=0, help=f"ONNX opset ({MIN_OPSET}-{MAX_OPSET})."))
    atol: float = field(default=1e-4, metadata=option(
        "--atol", help="Parity gate: max |logit diff| PyTorch vs ONNX Runtime (scaled by the largest |logit| "
        "above 1)."))
    max_drop: float = field(default=0.5, metadata=option(
        "--max-drop", help="Accuracy gate: max test-accuracy drop of a quantized variant, in points."))
    on_drop: str = field(default="fallback", metadata=option(
        "--on-drop", help="fallback (drop the variant, ship the next one, finally fp32) | fail."))
    max_length: int | None = field(default=None, metadata=option(
        "--max-length", help="Token limit of text models (default: the training run's, else 128)."))
    calibration_size: int = field(default=128, metadata=option(
        "--calibration-size", help="Training rows calibrating static QDQ (gpu; images also cpu)."))
    calibration_method: str = field(default="minmax", metadata=option(
        "--calibration-method", help=" | ".join(CALIBRATION_METHODS) + "."))
    threads: int | None = field(default=None, metadata=option(
        "--threads", help="CPU threads (default: the CPUs this process may use, cgroup quota included)."))
    gpu_prefer: str = field(default="fp16", metadata=option(
        "--gpu-prefer", help="gpu: recommend fp16 (any CUDA runtime) or qdq (int8 with TensorRT)."))
    eval_batch_size: int = field(default=64, metadata=option(
        "--eval-batch-size", help="Batch size of the accuracy evaluation."))
    max_eval_samples: int | None = field(default=None, metadata=option(
        "--max-eval-samples", kfp_unset=0, help="Cap on test rows for the gate."))
    latency_runs: int = field(default=50, metadata=option(
        "--latency-runs", help="Timed batch-1 runs per variant (0: skip)."))
    throughput_runs: int = field(default=5, metadata=option(
        "--throughput-runs", help="Timed batch runs per variant (0: skip)."))
    throughput_batch_size: int = field(default=32, metadata=option(
        "--throughput-batch-size", help="Batch size of the throughput measurement."))
    allow_pickle: bool = field(default=False, metadata=option("--allow-pickle", help="Accept pickle weights."))
    trust_remote_code: bool = field(default=False, metadata=option(
        "--trust-remote-code", help="Accept models with custom code."))
    cpu_isa: str = field(default="portable", metadata=option(
        "--cpu-isa", help="CPU int8 recipe: portable (7-bit weights, the same accuracy on every CPU) | vnni "
        "(8-bit, serve on VNNI/AMX nodes only) | native (vnni if this CPU has VNNI, else portable)."))
    agreement_sample_size: int = field(default=64, metadata=option(
        "--agreement-sample-size", help="Validation inputs stored with fp32 labels for the deploy-time agreement "
        "check (0: none)."))
    monitor_baseline_size: int = field(default=500, metadata=option(
        "--monitor-baseline-size", help="Validation rows of the drift-monitoring baseline written beside the graphs "
        "(transferkit.monitor.baseline; 0: none)."))
    adapter_variant: str = field(default="", metadata=option(
        "--adapter-variant", help="LoRA-trained generative models: also build variant `lora`, the base model as an "
        "fp32 graph with the model's adapter/ as a per-request adapter file of this name (a request activates it "
        "with `adapter`); \"\" = none."))

    int4_recipe: str = field(default="rtn", metadata=option(
        "--int4-recipe", help="Generative models: the int4 variant's weight-only recipe: rtn (the GenAI builder's "
        "default) | rtn-int8-head (the LM head in int8) | k-quant-mixed (k-quant; LM head and sensitive layers int8)."))

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir) if not isinstance(self.model_dir, Path) else self.model_dir
        self.data_dir = Path(self.data_dir)
        self.out_dir = Path(self.out_dir)
        _choice("target", self.target, TARGETS)
        _choice("on_drop", self.on_drop, ON_DROP)
        _choice("calibration_method", self.calibration_method, CALIBRATION_METHODS)
        _choice("gpu_prefer", self.gpu_prefer, GPU_PREFERENCES)
        _choice("cpu_isa", self.cpu_isa, CPU_ISAS)
        _choice("int4_recipe", self.int4_recipe, INT4_RECIPE_NAMES)
        if not isinstance(self.opset, int) or not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(
                f"opset: {self.opset!r} is not supported; expected an integer in [{MIN_OPSET}, {MAX_OPSET}]"
            )
        if not 0 < float(self.atol) <= 1:
            raise ConfigError(f"atol: {self.atol!r} must be in (0, 1] (absolute logit difference)")
        if not 0 <= float(self.max_drop) <= 100:
            raise ConfigError(f"max_drop: {self.max_drop!r} must be in [0, 100] accuracy points")
        if self.max_length is not None and not 2 <= self.max_length <= 8192:
            raise ConfigError(f"max_length: {self.max_length!r} must be in [2, 8192] tokens")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads: {self.threads!r} must be >= 1")
        for name in ("calibration_size", "eval_batch_size", "throughput_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}: {getattr(self, name)!r} must be >= 1")
        for name in ("latency_runs", "throughput_runs", "agreement_sample_size", "monitor_baseline_size"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name}: {getattr(self, name)!r} must be >= 0 (0 skips the measurement)")
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            raise ConfigError(f"max_eval_samples: {self.max_eval_samples!r} must be >= 1 or None")
        if self.adapter_variant:
            from transferkit.export.generative_adapters import valid_adapter_name

            if not valid_adapter_name(self.adapter_variant):
                raise ConfigError(f"adapter_variant: {self.adapter_variant!r} must be 1-63 letters, digits, '_', '.', "
                                  "'-' (starting with a letter or digit)")
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ConfigError(f"out_dir: {self.out_dir} exists and is not a directory")
        if self.out_dir.absolute() in (self.model_dir.absolute(), self.data_dir.absolute()):
            raise ConfigError(f"out_dir: {self.out_dir} must differ from model_dir and data_dir (it is replaced)")

    @property
    def resolved_threads(self) -> int:
        """Thread count to use: ``threads``, else the CPUs this process may use (affinity and cgroup quota)."""
        return int(self.threads or available_cpus())

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def available_cpus() -> int:
    """CPUs usable by this process: the affinity mask, capped by a cgroup v2 CPU quota (Kubernetes limits)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(allowed)}")


@dataclass
class ParityCase:
    """One PyTorch-vs-ONNX Runtime comparison.

    ``seq_len`` and ``padding`` describe text inputs; image cases have ``seq_len`` 0 and padding ``none``.
    ``input_shape`` is the shape of the first graph input (``[batch, seq]`` or ``[batch, 3, S, S]``).
    """

    batch_size: int
    seq_len: int
    padding: str
    max_abs_diff: float
    labels_agree: bool
    input_shape: list[int] = field(default_factory=list)


@dataclass
class VariantResult:
    """Measurements of one graph variant and the accuracy-gate decision."""

    name: str
    file: str
    precision: str
    size_bytes: int
    accuracy: float | None = None
    accuracy_drop_pt: float | None = None
    macro_f1: float | None = None
    agreement_with_fp32: float | None = None
    kept: bool = True
    reason: str = ""
    latency_b1_p50_ms: float | None = None
    latency_b1_p95_ms: float | None = None
    throughput_seq_per_s: float | None = None
    seconds_to_build: float | None = None


@dataclass
class ExportResult:
    """What the export step produced; ``to_dict()`` is what a KFP component records.

    Attributes:
        passed: True when every variant the target can recommend held its accuracy (no fallback); variants
            measured for comparison only (dynamic int8 of image models) do not count.
        fallback: True when the recommended variant is not the target's first choice because a variant
            failed the accuracy gate.
        max_length: Token limit of text models; None for image models.
        task: ``text-classification`` or ``image-classification``.
        input_shape: Graph input shape with -1 for dynamic axes (``[-1, -1]`` for text, ``[-1, 3, S, S]``).
        cpu: The export node's CPU (:class:`~transferkit.hardware.CpuInfo`): where the gates ran.
        int8_recipe: The CPU int8 recipe (:class:`~transferkit.export.int8.Int8Recipe`).
        agreement_sample_size: Validation inputs stored with their fp32 labels for the deploy-time check.
    """

    out_dir: Path
    target: str
    recommended_variant: str
    recommended_file: str
    parity_max_abs_diff: float
    parity_cases: list[ParityCase]
    variants: dict[str, VariantResult]
    passed: bool
    fallback: bool
    labels: list[str]
    max_length: int | None
    opset: int
    threads: int
    io_spec_path: Path
    metrics_path: Path
    report_md: Path
    report_html: Path
    graph_rewrites: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    task: str = DEFAULT_TASK
    input_shape: list[int] = field(default_factory=list)
    cpu: dict[str, Any] = field(default_factory=dict)
    int8_recipe: dict[str, Any] = field(default_factory=dict)
    agreement_sample_size: int = 0

    def scalar_metrics(self) -> dict[str, float]:
        """Flat numeric metrics (KFP ``Metrics`` artifact)."""
        scalars: dict[str, float] = {
            "parity_max_abs_diff": float(self.parity_max_abs_diff),
            "passed": float(self.passed),
            "export_seconds": float(self.seconds),
        }
        for name, variant in self.variants.items():
            scalars[f"{name}_size_mb"] = round(variant.size_bytes / 1e6, 3)
            for key in ("accuracy", "accuracy_drop_pt", "latency_b1_p50_ms", "latency_b1_p95_ms",
                        "throughput_seq_per_s"):
                value = getattr(variant, key)
                if value is not None:
                    scalars[f"{name}_{key}"] = float(value)
        return scalars

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (paths as strings)."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        data["scalars"] = self.scalar_metrics()
        return data
