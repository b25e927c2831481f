"""Export of generative models: ONNX with a KV cache through the ONNX Runtime GenAI model builder.

``export_generative(config, dataset, task)`` writes an export directory with one folder per variant (``fp32/``
and ``int4/`` for ``--target cpu``; ``fp16/`` and ``int4/`` for ``--target gpu``), each holding the builder's
``model.onnx`` (+ ``model.onnx.data``), ``genai_config.json`` and the tokenizer files, and beside them
``generation_spec.json`` (variants, recommended variant, prompt format, context and token limits, the saved
generation settings), ``metrics.json`` and ``report.md``/``report.html``; all-or-nothing. With ``adapter_variant``
a LoRA-trained model also gets ``lora/``: its base as an fp32 graph plus its adapter as a per-request adapter file
(:func:`adapter_variant`, :mod:`transferkit.export.generative_adapters`).

Gates (on the validation split):

- parity: greedy decoding of the fp32 graph reproduces PyTorch's first ``PARITY_TOKENS`` new tokens for at
  least ``PARITY_AGREEMENT`` of the prompts (EOS suppressed on both sides until then, so every prompt compares
  the same number of tokens), and the first-step logits differ by at most ``LOGITS_ATOL``; else ParityError.
- quality: a quantized variant (int4 ``MatMulNBits``, weight-only) is kept only when its ROUGE-L (the task's
  primary metric) is at most ``--max-drop`` points below fp32's; else it is dropped (``--on-drop fail``
  raises QuantizationGateError).

The served prompt is the user message wrapped in the chat template: the template is rendered once here around a
marker and stored as a prefix and suffix, so the server (which has no Jinja) builds exactly the ids of
:func:`transferkit.data.prompts.prompt_ids`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import ExportError, ModelError, ParityError, PreparedDataError, QuantizationGateError
from transferkit.export.generative_adapters import ADAPTER_VARIANT

logger = logging.getLogger(__name__)

GENERATION_SPEC_FILE = "generation_spec.json"
METRICS_FILE = "metrics.json"
# Variants built per target, in build order; the first is the parity reference on cpu.
TARGET_VARIANTS = {"cpu": ("fp32", "int4"), "gpu": ("fp16", "int4")}
# Recommendation order per target (the quantized variant first when it holds its quality).
TARGET_PREFERENCES = {"cpu": ("int4", "fp32"), "gpu": ("int4", "fp16")}
BUILDER_PROVIDER = {"cpu": "cpu", "gpu": "cuda"}
PARITY_TOKENS = 32
PARITY_AGREEMENT = 0.95
LOGITS_ATOL = 1e-3
# Validation prompts the gates use at most (generation is the expensive part of the export).
DEFAULT_GATE_PROMPTS = 32
# int4 recipes: ONNX Runtime GenAI model builder ``--extra_options`` of the int4 variant (weight-only MatMulNBits).
INT4_RECIPES: dict[str, tuple[str, ...]] = {
    "rtn": (),  # the builder's default: round-to-nearest, blocks of 32, int8 activations on CPU
    # The LM head (the largest matmul) in int8. Not "matmul_mixed_precision=last_matmul:int8" on the default
    # method: GenAI 0.18 writes a graph that does not load (lm_head.MatMul.weight_Q8G32 has no initializer).
    "rtn-int8-head": ("algo_config=rtn_last",),
    "k-quant-mixed": ("algo_config=k_quant_mixed",),  # k-quant; LM head and the sensitive layers in int8
}
DEFAULT_INT4_RECIPE = "rtn"
_MARKER = "\u2063TRANSFERKIT_MESSAGE\u2063"
_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception)\b.*:")


@dataclass
class GenerativeVariant:
    """One built variant: its folder, size, quality and speed."""

    name: str
    dir: str
    precision: str
    size_bytes: int
    rougeL: float | None = None
    rougeL_drop_pt: float | None = None
    kept: bool = True
    reason: str = ""
    tokens_per_s: float | None = None
    ttft_ms: float | None = None
    seconds_to_build: float | None = None
    recipe: str = ""


@dataclass
class GenerativeExportResult:
    """What ``transferkit export`` returns for a generative model."""

    out_dir: Path
    task: str
    target: str
    recommended_variant: str
    variants: dict[str, GenerativeVariant]
    parity_token_agreement: float
    parity_logits_max_abs_diff: float
    parity_prompts: int
    passed: bool
    fallback: bool
    spec_path: Path
    metrics_path: Path
    report_md: Path
    report_html: Path
    threads: int
    seconds: float = 0.0
    pytorch_tokens_per_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def recommended_file(self) -> str:
        """The recommended variant's folder (``int4``)."""
        return self.variants[self.recommended_variant].dir

    def scalar_metrics(self) -> dict[str, float]:
        """Flat numeric metrics (KFP ``Metrics`` artifact): parity, and per variant size, ROUGE-L and speed."""
        scalars: dict[str, float] = {
            "parity_token_agreement": float(self.parity_token_agreement),
            "parity_logits_max_abs_diff": float(self.parity_logits_max_abs_diff),
            "passed": float(self.passed),
            "export_seconds": float(self.seconds),
        }
        for name, variant in self.variants.items():
            scalars[f"{name}_size_mb"] = round(variant.size_bytes / 1e6, 3)
            for key in ("rougeL", "rougeL_drop_pt", "tokens_per_s", "ttft_ms"):
                value = getattr(variant, key)
                if value is not None:
                    scalars[f"{name}_{key}"] = float(value)
        return scalars

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        out = asdict(self)
        out["variants"] = {k: asdict(v) for k, v in self.variants.items()}
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}

    def summary_lines(self) -> list[str]:
        """Lines the CLI prints."""
        lines = [f"Wrote {self.out_dir}: recommended {self.recommended_variant} ({self.recommended_file}/), parity "
                 f"{self.parity_token_agreement:.0%} of {self.parity_prompts} prompts token-identical, first-step "
                 f"logits max |diff| {self.parity_logits_max_abs_diff:.2g}, quality gate "
                 f"{'passed' if self.passed else 'fell back'}"]
        for name, v in self.variants.items():
            rouge = "n/a" if v.rougeL is None else f"{v.rougeL:.4f}"
            speed = "" if v.tokens_per_s is None else f", {v.tokens_per_s:.1f} tokens/s"
            lines.append(f"  {name:5s} {v.size_bytes / 1e6:7.1f} MB  ROUGE-L {rouge}  "
                         f"{'kept' if v.kept else 'dropped'} ({v.reason}){speed}")
        return lines


def prompt_format(tokenizer: Any) -> dict[str, Any]:
    """How the server turns a user message into prompt ids (see the module docstring).

    Raises:
        ExportError: The chat template does not insert the message verbatim.
    """
    from transferkit.data.prompts import PLAIN_SEPARATOR, has_chat_template

    if has_chat_template(tokenizer):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": _MARKER}], tokenize=False,
                                                 add_generation_prompt=True)
        if rendered.count(_MARKER) != 1:
            raise ExportError("tokenizer chat_template: does not insert the user message verbatim once; the "
                              "server cannot rebuild the prompt")
        prefix, suffix = rendered.split(_MARKER)
        add_special = False
    else:
        prefix, suffix, add_special = "", PLAIN_SEPARATOR, True
    return {"prefix": prefix, "suffix": suffix, "add_special_tokens": add_special,
            "drop_trailing_id": tokenizer.sep_token_id}


def build_variant(model_dir: Path, out: Path, precision: str, target: str, cache: Path,
                  extra_options: tuple[str, ...] = ()) -> float:
    """Run the ONNX Runtime GenAI model builder (a subprocess: it prints and holds the whole model).

    ``extra_options``: the builder's ``KEY=VALUE`` options (an :data:`INT4_RECIPES` entry for int4).

    Returns:
        Seconds taken.

    Raises:
        ExportError: The builder failed (its last output line is quoted).
    """
    started = time.perf_counter()
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir), "-o", str(out),
               "-p", precision, "-e", BUILDER_PROVIDER[target], "-c", str(cache)]
    if extra_options:
        command += ["--extra_options", *extra_options]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not (out / "genai_config.json").is_file():
        lines = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        # The builder's progress bars print after its traceback: quote the exception line, not the last line.
        errors = [line for line in lines if _EXCEPTION_LINE.match(line)]
        raise ExportError(f"{model_dir}: the ONNX Runtime GenAI model builder failed for {precision}/{target}: "
                          f"{(errors or lines or ['no output'])[-1]}")
    return time.perf_counter() - started


def _configure(variant_dir: Path, generation: Any, threads: int) -> None:
    """Write the saved generation settings and the thread count into ``genai_config.json``."""
    path = variant_dir / "genai_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    search = config.setdefault("search", {})
    search.update(do_sample=bool(generation.do_sample), num_beams=1,
                  repetition_penalty=float(generation.repetition_penalty or 1.0))
    if generation.do_sample:
        search.update(temperature=float(generation.temperature or 1.0), top_p=float(generation.top_p or 1.0))
    eos = generation.eos_token_id
    if eos is not None:
        config["model"]["eos_token_id"] = eos
    session = config["model"]["decoder"].setdefault("session_options", {})
    session["intra_op_num_threads"] = int(threads)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    tmp.replace(path)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def og_generate(model: Any, ids: list[int], max_new: int, *, min_new: int = 0,
                adapter: tuple[Any, str] | None = None) -> tuple[list[int], float, float]:
    """Greedy decoding with ONNX Runtime GenAI: (new tokens, seconds to the first token, total seconds).

    ``adapter``: ``(og.Adapters, name)`` of the adapter to activate (the per-request adapter variant).
    """
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_new, min_length=len(ids) + min_new, do_sample=False,
                              num_beams=1)
    started = time.perf_counter()
    generator = og.Generator(model, params)
    if adapter is not None:
        generator.set_active_adapter(*adapter)
    generator.append_tokens(ids)
    tokens: list[int] = []
    first = 0.0
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
        if len(tokens) == 1:
            first = time.perf_counter() - started
    return tokens, first, time.perf_counter() - started


def _first_logits(model: Any, ids: list[int]) -> Any:
    import numpy as np
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    logits = np.asarray(generator.get_output("logits"), dtype=np.float32)
    return logits.reshape(-1, logits.shape[-1])[-1]


def parity_gate(torch_model: Any, og_model: Any, prompts: list[list[int]]) -> tuple[float, float]:
    """Token agreement and first-step logits max |diff| of the fp32 graph vs PyTorch (module docstring).

    Raises:
        ParityError: Below ``PARITY_AGREEMENT`` or above ``LOGITS_ATOL``.
    """
    import numpy as np
    import torch

    identical, worst = 0, 0.0
    with torch.inference_mode():
        for ids in prompts:
            batch = torch.tensor([ids])
            reference = torch_model(input_ids=batch).logits[0, -1].float().numpy()
            worst = max(worst, float(np.abs(_first_logits(og_model, ids) - reference).max()))
            expected = torch_model.generate(batch, attention_mask=torch.ones_like(batch), do_sample=False, num_beams=1,
                                            max_new_tokens=PARITY_TOKENS, min_new_tokens=PARITY_TOKENS,
                                            repetition_penalty=1.0)[0, len(ids):].tolist()
            got, _, _ = og_generate(og_model, ids, PARITY_TOKENS, min_new=PARITY_TOKENS)
            identical += got == expected
    agreement = identical / len(prompts)
    if agreement < PARITY_AGREEMENT or worst > LOGITS_ATOL:
        raise ParityError(f"parity: ONNX Runtime GenAI fp32 vs PyTorch: first {PARITY_TOKENS} greedy tokens identical "
                          f"for {agreement:.0%} of {len(prompts)} validation prompts (need >= "
                          f"{PARITY_AGREEMENT:.0%}), first-step logits max |diff| {worst:.3g} (need <= {LOGITS_ATOL})")
    return agreement, worst


def quality(og_model: Any, tokenizer: Any, prompts: list[list[int]], references: list[str], max_new: int
            ) -> tuple[float, float, float]:
    """ROUGE-L of greedy outputs, decode tokens/s and mean time to first token (ms) of one variant."""
    from transferkit.evaluate.generation import summarize_outputs

    outputs, tokens, seconds, firsts = [], 0, 0.0, []
    for ids in prompts:
        new, first, total = og_generate(og_model, ids, max_new)
        outputs.append(tokenizer.decode(new, skip_special_tokens=True).strip())
        tokens, seconds = tokens + len(new), seconds + total
        firsts.append(first)
    scalars, _ = summarize_outputs(outputs, references)
    return float(scalars["rougeL"]), tokens / max(seconds, 1e-9), 1000 * sum(firsts) / len(firsts)


def _pytorch_speed(model: Any, prompts: list[list[int]], max_new: int) -> float:
    import torch

    tokens, started = 0, time.perf_counter()
    with torch.inference_mode():
        for ids in prompts:
            batch = torch.tensor([ids])
            out = model.generate(batch, attention_mask=torch.ones_like(batch), do_sample=False, num_beams=1,
                                 max_new_tokens=max_new)
            tokens += out.shape[1] - len(ids)
    return tokens / max(time.perf_counter() - started, 1e-9)


def _load(config: Any, task: Any) -> tuple[Any, Any, Any]:
    """The resolved model, its tokenizer and the PyTorch model, refusing what the builder cannot take.

    Raises:
        ModelError: Not a causal LM of this task (a classifier, an encoder-decoder), or it does not load.
    """
    from transferkit.models.catalog import resolve_model
    from transferkit.models.loading import load_tokenizer
    from transferkit.train.sft import check_generator, load_generator

    model_dir = Path(config.model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir}: not a model directory (no config.json)")
    resolved = resolve_model(str(model_dir), allow_pickle=config.allow_pickle,
                             trust_remote_code=config.trust_remote_code)
    check_generator(resolved.config, resolved.path, task.name)
    if resolved.config.get("is_encoder_decoder"):
        raise ModelError(f"{model_dir}: an encoder-decoder (seq2seq) model; the generative export (ONNX Runtime "
                         "GenAI) takes decoder-only causal language models (*ForCausalLM)")
    tokenizer = load_tokenizer(resolved, trust_remote_code=config.trust_remote_code)
    model = load_generator(resolved.path, allow_pickle=config.allow_pickle,
                           trust_remote_code=config.trust_remote_code).eval()
    return resolved, tokenizer, model


def adapter_variant(config: Any, model_dir: Path, out: Path, merged: Any, prompts: list[list[int]],
                    generation: Any, threads: int) -> GenerativeVariant:
    """Build the per-request adapter variant of a LoRA-trained model and check it against the merged fp32 graph.

    With its adapter active, greedy decoding must reproduce the merged graph's first ``PARITY_TOKENS`` tokens for
    at least ``PARITY_AGREEMENT`` of the prompts.

    Raises:
        ExportError: Not a LoRA-trained model (no ``adapter/``), or a builder failure.
        ParityError: The adapter variant decodes differently from the merged model.
    """
    import onnxruntime_genai as og

    from transferkit.export.generative_adapters import ADAPTER_DIR, ADAPTER_SUFFIX, export_adapter_variant

    name = config.adapter_variant
    started = time.perf_counter()
    export_adapter_variant(model_dir, name, out, allow_pickle=config.allow_pickle,
                           trust_remote_code=config.trust_remote_code)
    seconds = time.perf_counter() - started
    _configure(out, generation, threads)
    model = og.Model(str(out))
    adapters = og.Adapters(model)
    adapters.load(str(out / ADAPTER_DIR / f"{name}{ADAPTER_SUFFIX}"), name)
    identical = sum(og_generate(model, ids, PARITY_TOKENS, min_new=PARITY_TOKENS, adapter=(adapters, name))[0]
                    == og_generate(merged, ids, PARITY_TOKENS, min_new=PARITY_TOKENS)[0] for ids in prompts)
    agreement = identical / len(prompts)
    if agreement < PARITY_AGREEMENT:
        raise ParityError(f"adapter_variant: base graph + adapter {name!r} vs the merged fp32 graph: first "
                          f"{PARITY_TOKENS} greedy tokens identical for {agreement:.0%} of {len(prompts)} validation "
                          f"prompts (need >= {PARITY_AGREEMENT:.0%})")
    logger.info("Adapter variant: base + adapter %r matches the merged model on %.0f%% of %d prompts", name,
                100 * agreement, len(prompts))
    return GenerativeVariant(out.name, out.name, "fp32", _dir_size(out), seconds_to_build=round(seconds, 3),
                             reason=f"base + adapter {name!r} per request (without it: the base model); "
                             f"{agreement:.0%} of {len(prompts)} prompts token-identical to the merged model")


def _settings(model_dir: Path, config: Any) -> tuple[Any, int, str]:
    """The saved generation settings, the max_length prompts were cut to and the quantization trained against."""
    from transferkit.evaluate.generation import _generation_config, _read_summary

    resolved = _read_summary(model_dir).get("resolved") or {}
    max_length = int(config.max_length or resolved.get("max_length") or 512)
    trained_for = (resolved.get("quantization_aware") or {}).get("mode", "none")
    if trained_for == "int4" and config.int4_recipe != DEFAULT_INT4_RECIPE:
        logger.warning("%s was trained against the %s int4 recipe; %s rounds differently, so its int4 variant is "
                       "not the model that was trained", model_dir, DEFAULT_INT4_RECIPE, config.int4_recipe)
    return _generation_config(model_dir), max_length, trained_for


def export_generative(config: Any, dataset: Any, task: Any) -> GenerativeExportResult:
    """Export a fine-tuned causal LM with the GenAI builder, gate parity and quality, write the report.

    Raises:
        ModelError: Not a decoder-only causal LM of the dataset's task, or it does not load.
        PreparedDataError: An empty validation split.
        ExportError: The builder failed, or a chat template the server cannot rebuild.
        ParityError: fp32 decoding differs from PyTorch (module docstring).
        QuantizationGateError: int4 lost more than ``max_drop`` ROUGE-L points with ``on_drop='fail'``.
    """
    import onnxruntime_genai as og
    import torch

    from transferkit.data.prompts import generation_prompt
    from transferkit.io import atomic_output_dir, check_replaceable, write_json
    from transferkit.train.sft import read_pairs

    started = time.perf_counter()
    check_replaceable(config.out_dir, (GENERATION_SPEC_FILE,))
    resolved, tokenizer, torch_model = _load(config, task)
    if dataset.table("validation").num_rows == 0:
        raise PreparedDataError(f"{dataset.path / 'validation.parquet'}: no rows; the parity and quality gates need "
                                "examples")
    pairs = read_pairs(dataset, "validation")
    generation, max_length, trained_for = _settings(resolved.path, config)
    max_new = int(generation.max_new_tokens or 64)
    limit = config.max_eval_samples or DEFAULT_GATE_PROMPTS
    prompts = [generation_prompt(tokenizer, i, s, max_length, max_new)
               for i, s in zip(pairs.instructions[:limit], pairs.sources[:limit], strict=True)]
    references = pairs.labels[:limit]
    fmt = prompt_format(tokenizer)
    threads = config.resolved_threads
    reference_name, *quantized = TARGET_VARIANTS[config.target]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with atomic_output_dir(config.out_dir, owned_files=(GENERATION_SPEC_FILE,)) as tmp:
            variants: dict[str, GenerativeVariant] = {}
            for name in (reference_name, *quantized):
                recipe = config.int4_recipe if name == "int4" else ""
                seconds = build_variant(resolved.path, tmp / name, name, config.target, tmp / ".builder-cache",
                                        INT4_RECIPES[recipe] if recipe else ())
                _configure(tmp / name, generation, threads)
                variants[name] = GenerativeVariant(name, name, name, _dir_size(tmp / name),
                                                   seconds_to_build=round(seconds, 3), recipe=recipe)
                logger.info("Built %s (%.1f MB) in %.1f s", name, variants[name].size_bytes / 1e6, seconds)
            shutil.rmtree(tmp / ".builder-cache", ignore_errors=True)
            # The gates run on CPU: fp32 for cpu targets; a gpu target's fp16 graph needs CUDA, so the gpu
            # export's parity is checked on an fp32 build made for the purpose.
            parity_dir = tmp / reference_name
            if config.target == "gpu":
                parity_dir = tmp / ".parity-fp32"
                build_variant(resolved.path, parity_dir, "fp32", "cpu", tmp / ".builder-cache")
            agreement, worst = parity_gate(torch_model, og.Model(str(parity_dir)), prompts)
            logger.info("Parity: %.0f%% of %d prompts token-identical, first-step logits max |diff| %.3g",
                        100 * agreement, len(prompts), worst)
            pytorch_speed = _pytorch_speed(torch_model, prompts[:4], max_new)
            scores: dict[str, float] = {}
            for name, variant in variants.items():
                if config.target == "gpu":
                    variant.reason = "built for CUDA; not measured on this node"
                    continue
                rouge, speed, ttft = quality(og.Model(str(tmp / name)), tokenizer, prompts, references, max_new)
                scores[name] = rouge
                variant.rougeL, variant.tokens_per_s, variant.ttft_ms = round(rouge, 6), round(speed, 2), round(ttft, 2)
            base = scores.get(reference_name, scores.get("fp32"))
            for name in quantized:
                variant = variants[name]
                if base is None:
                    variant.reason = "not gated (no reference ROUGE-L on this node)"
                    continue
                variant.rougeL_drop_pt = round(100 * (base - scores[name]), 3)
                variant.kept = variant.rougeL_drop_pt <= config.max_drop
                variant.reason = (f"ROUGE-L drop {variant.rougeL_drop_pt:.2f} pt "
                                  f"{'<=' if variant.kept else '>'} max_drop {config.max_drop:g}")
                if not variant.kept and config.on_drop == "fail":
                    raise QuantizationGateError(f"{name}: {variant.reason} on {len(prompts)} validation prompts")
            variants[reference_name].reason = variants[reference_name].reason or "reference"
            if config.adapter_variant:  # after the quality gate: without its adapter the variant is the base model
                variants[ADAPTER_VARIANT] = adapter_variant(config, resolved.path, tmp / ADAPTER_VARIANT,
                                                            og.Model(str(parity_dir)), prompts, generation, threads)
            shutil.rmtree(tmp / ".parity-fp32", ignore_errors=True)
            for variant in variants.values():
                if not variant.kept:
                    shutil.rmtree(tmp / variant.dir, ignore_errors=True)
            preference = TARGET_PREFERENCES[config.target]
            recommended = next(name for name in preference if variants[name].kept)
            context = json.loads((tmp / reference_name / "genai_config.json").read_text())["model"]["context_length"]
            spec = {"kind": "generative", "task": task.name, "target": config.target, "recommended": recommended,
                    "variants": {n: {"dir": v.dir, "precision": v.precision,
                                     **({"recipe": v.recipe} if v.recipe else {}),
                                     **({"adapters": [config.adapter_variant]} if n == ADAPTER_VARIANT else {})}
                                 for n, v in variants.items() if v.kept},
                    "prompt": fmt, "context_length": int(context), "max_new_tokens": max_new,
                    "max_tokens_limit": int(context) - 1, "eos_token_id": generation.eos_token_id,
                    "generation": generation.to_diff_dict(), "threads": threads,
                    "model": str(resolved.path), "seq_len_trained": max_length, "quantization_aware": trained_for}
            write_json(tmp / GENERATION_SPEC_FILE, spec)
            result = GenerativeExportResult(
                out_dir=Path(config.out_dir), task=task.name, target=config.target, recommended_variant=recommended,
                variants=variants, parity_token_agreement=agreement, parity_logits_max_abs_diff=worst,
                parity_prompts=len(prompts), passed=all(variants[n].kept for n in quantized),
                fallback=recommended != preference[0], spec_path=Path(config.out_dir) / GENERATION_SPEC_FILE,
                metrics_path=Path(config.out_dir) / METRICS_FILE, report_md=Path(config.out_dir) / "report.md",
                report_html=Path(config.out_dir) / "report.html", threads=threads,
                seconds=round(time.perf_counter() - started, 3), pytorch_tokens_per_s=round(pytorch_speed, 2))
            write_json(tmp / METRICS_FILE, result.to_dict())
            _report(result, resolved.path).write(tmp)
    finally:
        torch.set_num_threads(previous_threads)
    return result


def _report(result: GenerativeExportResult, model_path: Path) -> Any:
    from transferkit.reporting import Report

    report = Report(f"Generative export: {model_path.name}")
    report.paragraph(f"Task {result.task}, target {result.target}, {result.threads} threads. Recommended variant: "
                     f"{result.recommended_variant}. Built with the ONNX Runtime GenAI model builder (KV cache).")
    report.heading("Parity gate (fp32 vs PyTorch, validation prompts)")
    report.table(["prompts", f"first {PARITY_TOKENS} greedy tokens identical", "first-step logits max |diff|"],
                 [[result.parity_prompts, f"{result.parity_token_agreement:.0%} (need >= {PARITY_AGREEMENT:.0%})",
                   f"{result.parity_logits_max_abs_diff:.3g} (need <= {LOGITS_ATOL})"]])
    report.heading("Variants")
    rows = [[v.name, v.recipe or "-", f"{v.size_bytes / 1e6:.1f}", "n/a" if v.rougeL is None else v.rougeL,
             "n/a" if v.rougeL_drop_pt is None else v.rougeL_drop_pt,
             "n/a" if v.tokens_per_s is None else v.tokens_per_s, "n/a" if v.ttft_ms is None else v.ttft_ms,
             "kept" if v.kept else "dropped", v.reason] for v in result.variants.values()]
    report.table(["variant", "int4 recipe", "size (MB)", "ROUGE-L", "drop (pt)", "tokens/s", "TTFT (ms)", "kept",
                  "reason"], rows)
    if result.pytorch_tokens_per_s is not None:
        report.paragraph(f"PyTorch eager generate (KV cache): {result.pytorch_tokens_per_s:.1f} tokens/s.")
    return report
