"""Evaluation of generative models: ROUGE-1/2/L and lengths on a split, against a lead and a zero-shot baseline.

The fine-tuned model generates an output for every pair of the split (prompt built and cut as in training,
:mod:`transferkit.data.prompts`; decoding from the model's ``generation_config.json``). Two baselines are scored
on the same pairs: the lead baseline (the first sentence of the input) and the zero-shot base model (the
``--baseline`` model, else the base model named in ``training_summary.json``) with the same prompt and decoding.
Writes ``metrics.json``, ``predictions.parquet`` and a report whose per-example table shows input, reference,
lead, zero-shot and fine-tuned outputs. The primary metric (default ``rougeL``) feeds the gate.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import EvaluationError, ModelError

logger = logging.getLogger(__name__)

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
GENERATION_METRICS = (*ROUGE_TYPES, "generated_words", "reference_words")
DEFAULT_PRIMARY = "rougeL"
# Prompts per generate() call.
GENERATION_BATCH = 8
# Rows of the per-example table in the report (every row is in predictions.parquet).
REPORT_EXAMPLES = 50


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, np.ndarray]:
    """Per-example ROUGE F-measures (the ``rouge-score`` package, Porter stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    rows = [scorer.score(ref, pred) for pred, ref in zip(predictions, references, strict=True)]
    return {name: np.asarray([row[name].fmeasure for row in rows], dtype=np.float64) for name in ROUGE_TYPES}


def summarize_outputs(predictions: list[str], references: list[str]) -> tuple[dict[str, float], np.ndarray]:
    """Mean ROUGE-1/2/L and mean lengths in words; the per-example ROUGE-L."""
    scores = rouge_scores(predictions, references)
    scalars = {name: round(float(values.mean()), 6) for name, values in scores.items()}
    scalars["generated_words"] = round(float(np.mean([len(p.split()) for p in predictions])), 3)
    scalars["reference_words"] = round(float(np.mean([len(r.split()) for r in references])), 3)
    return scalars, scores["rougeL"]


def _read_summary(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "training_summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError as exc:
        raise EvaluationError(f"{path}: not valid JSON ({exc})") from None


def generate(model_ref: str | Path, pairs: dict[str, list[str]], *, max_length: int, generation: Any, seed: int,
             progress: bool, task_name: str, allow_pickle: bool = False, trust_remote_code: bool = False
             ) -> list[str]:
    """Generate an output for every (instruction, source) pair with a causal LM or a seq2seq model.

    Raises:
        ModelError: Not a causal LM or seq2seq model, or the model or its tokenizer does not load.

    """
    import torch
    from tqdm.auto import tqdm

    from transferkit.data.prompts import generation_prompt
    from transferkit.models.catalog import resolve_model
    from transferkit.models.loading import load_tokenizer
    from transferkit.train.sft import check_generator, load_generator

    resolved = resolve_model(str(model_ref), allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    check_generator(resolved.config, resolved.path, task_name)
    tokenizer = load_tokenizer(resolved, trust_remote_code=trust_remote_code)
    model = load_generator(resolved.path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code).eval()
    seq2seq = bool(model.config.is_encoder_decoder)
    # A decoder-only model continues the prompt: pad on the left so every prompt ends where generation starts.
    tokenizer.padding_side = "right" if seq2seq else "left"
    prompts = [generation_prompt(tokenizer, instruction, source, max_length, generation.max_new_tokens,
                                 seq2seq=seq2seq)
               for instruction, source in zip(pairs["instruction"], pairs["source"], strict=True)]
    outputs: list[str] = []
    torch.manual_seed(seed)
    with torch.inference_mode(), tqdm(total=len(prompts), desc=f"generate {resolved.path.name}",
                                      disable=not progress or None, leave=False) as bar:
        for start in range(0, len(prompts), GENERATION_BATCH):
            chunk = prompts[start:start + GENERATION_BATCH]
            batch = tokenizer.pad({"input_ids": chunk}, padding=True, return_tensors="pt")
            generated = model.generate(**batch, generation_config=generation)
            new_tokens = generated if seq2seq else generated[:, batch["input_ids"].shape[1]:]
            outputs += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            bar.update(len(chunk))
    return outputs


def _generation_config(model_dir: Path) -> Any:
    """The model's saved generation settings (greedy, 64 new tokens when it has none)."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_dir)
    except OSError:
        logger.info("%s: no generation_config.json; greedy decoding, 64 new tokens", model_dir)
        return GenerationConfig(max_new_tokens=64, do_sample=False, num_beams=1)


def _cell(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def evaluate_generation(cfg: Any, dataset: Any, task: Any) -> Any:
    """Evaluate a generative model on ``cfg.split`` (see the module docstring).

    Raises:
        EvaluationError: A classification primary metric, or a model that is not a causal LM of this task.
        ModelError: The model or baseline does not load.
        PreparedDataError: An empty split or empty rows.

    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from transferkit.data.prompts import first_sentence
    from transferkit.evaluate.evaluation import EvaluateResult, _gate
    from transferkit.io import atomic_output_dir, write_json
    from transferkit.train.sft import read_pairs

    where = str(cfg.data_dir / f"{cfg.split}.parquet")
    # "accuracy" is EvaluateConfig's default: a generative task reads it as "the task's primary metric".
    metric = DEFAULT_PRIMARY if cfg.primary_metric == "accuracy" else cfg.primary_metric
    if metric not in GENERATION_METRICS:
        raise EvaluationError(f"primary_metric: {cfg.primary_metric!r} does not apply to task {task.name}; "
                              f"expected one of {', '.join(GENERATION_METRICS)}")
    model_dir = Path(cfg.model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir}: not a model directory (no config.json)")
    from transferkit.models.catalog import resolve_model
    from transferkit.train.sft import check_generator

    # Refuse a wrong model or baseline before minutes of generation.
    for ref in filter(None, (model_dir, cfg.baseline)):
        resolved_ref = resolve_model(str(ref), allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
        check_generator(resolved_ref.config, resolved_ref.path, task.name)
    split = read_pairs(dataset, cfg.split)
    pairs = {"instruction": split.instructions, "source": split.sources}
    references = split.labels
    summary = _read_summary(model_dir)
    resolved = summary.get("resolved") or {}
    max_length = int(cfg.max_length or resolved.get("max_length") or 512)
    seed = int((summary.get("config") or {}).get("seed", 42))
    generation = _generation_config(model_dir)
    common = {"max_length": max_length, "generation": generation, "seed": seed, "progress": cfg.progress,
              "task_name": task.name,
              "allow_pickle": cfg.allow_pickle, "trust_remote_code": cfg.trust_remote_code}
    generated = generate(model_dir, pairs, **common)
    scalars, per_example = summarize_outputs(generated, references)
    lead = [first_sentence(source) for source in split.sources]
    lead_scalars, _ = summarize_outputs(lead, references)
    baseline_ref = cfg.baseline or ((summary.get("model") or {}).get("path")
                                    if summary.get("strategy") != "off_the_shelf" else None)
    baseline_info, zero_shot = None, None
    if baseline_ref:
        zero_shot = generate(baseline_ref, pairs, **common)
        base_scalars, _ = summarize_outputs(zero_shot, references)
        baseline_info = {"model": str(baseline_ref), "mode": "zero_shot", "scalars": base_scalars,
                         "deltas": {k: round(scalars[k] - v, 6) for k, v in base_scalars.items()}}
    lead_info = {"mode": "lead", "scalars": lead_scalars,
                 "deltas": {k: round(scalars[k] - v, 6) for k, v in lead_scalars.items()}}
    primary = float(scalars[metric])
    passed, reason = _gate(metric, primary, cfg.min_primary, where)
    logger.info("%s on %s (%d pairs): ROUGE-1 %.4f, ROUGE-2 %.4f, ROUGE-L %.4f (lead %.4f%s)", model_dir, where,
                len(references), scalars["rouge1"], scalars["rouge2"], scalars["rougeL"], lead_scalars["rougeL"],
                f", zero-shot {baseline_info['scalars']['rougeL']:.4f}" if baseline_info else "")
    inputs = {"max_length": max_length, "max_new_tokens": generation.max_new_tokens,
              "decoding": "beam" if generation.num_beams > 1 else ("sampling" if generation.do_sample else "greedy")}
    payload = {**scalars, "primary": primary, "primary_metric": metric, "passed": passed, "reason": reason,
               "min_primary": cfg.min_primary, "higher_is_better": True, "n_examples": len(references),
               "split": cfg.split, "model": str(model_dir), "data": str(cfg.data_dir), "modality": task.modality,
               "task": task.name, **inputs, "baseline": baseline_info, "lead_baseline": lead_info}
    report = _report(cfg, task, payload, split, references, lead, zero_shot, generated, per_example)
    with atomic_output_dir(cfg.out_dir) as tmp:
        write_json(tmp / "metrics.json", payload)
        columns = {"instruction": split.instructions, "source": split.sources, "reference": references,
                   "generated": generated, "lead": lead, "rougeL": per_example.tolist()}
        if zero_shot is not None:
            columns["zero_shot"] = zero_shot
        pq.write_table(pa.table(columns), tmp / "predictions.parquet")
        report.write(tmp, stem="report")
    out = Path(cfg.out_dir)
    return EvaluateResult(
        primary_metric=metric, primary=primary, passed=passed, reason=reason, scalars=dict(scalars), labels=[],
        confusion_matrix=[], roc=None, per_class=[], slices=None, baseline=baseline_info,
        n_examples=len(references), out_dir=out, metrics_path=out / "metrics.json", report_html=out / "report.html",
        report_md=out / "report.md", predictions_path=out / "predictions.parquet",
        extra={**inputs, "modality": task.modality, "lead_baseline": lead_info},
    )


def _report(cfg: Any, task: Any, payload: dict[str, Any], split: Any, references: list[str], lead: list[str],
            zero_shot: list[str] | None, generated: list[str], per_example: np.ndarray) -> Any:
    from transferkit.reporting import Report

    report = Report(f"Evaluation ({task.name}): {cfg.model_dir}")
    report.paragraph(f"{payload['n_examples']} pairs of {cfg.data_dir / (cfg.split + '.parquet')}; "
                     f"{payload['decoding']} decoding, at most {payload['max_new_tokens']} new tokens, prompts cut "
                     f"to {payload['max_length']} tokens. {payload['reason']}.")
    rows = [["fine-tuned", *(payload[k] for k in GENERATION_METRICS)],
            ["lead (first sentence)", *(payload["lead_baseline"]["scalars"][k] for k in GENERATION_METRICS)]]
    if payload["baseline"]:
        rows.append([f"zero-shot {payload['baseline']['model']}",
                     *(payload["baseline"]["scalars"][k] for k in GENERATION_METRICS)])
    report.table(["model", "ROUGE-1", "ROUGE-2", "ROUGE-L", "generated words", "reference words"], rows)
    report.heading("Examples")
    headers = ["#", "input", "reference", "lead", *(["zero-shot"] if zero_shot is not None else []), "fine-tuned",
               "ROUGE-L"]
    table = []
    for i in range(min(REPORT_EXAMPLES, len(references))):
        prompt = f"{split.instructions[i]} | {split.sources[i]}" if split.instructions[i] else split.sources[i]
        table.append([i, _cell(prompt), _cell(references[i]), _cell(lead[i]),
                      *([_cell(zero_shot[i])] if zero_shot is not None else []), _cell(generated[i]),
                      float(per_example[i])])
    report.table(headers, table)
    return report
