"""`transferkit forgetting`: measure catastrophic forgetting against the base model and gate on it."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli._common import console, handle_errors


def _base_from_summary(model: Path) -> str | None:
    """The base model recorded by `transferkit train` in training_summary.json, if any."""
    import json

    summary = model / "training_summary.json"
    if not summary.is_file():
        return None
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    reference = (data.get("model") or {}).get("reference") if isinstance(data.get("model"), dict) else None
    if isinstance(reference, str):
        return reference
    for holder in (data, data.get("config") or {}):
        if isinstance(holder, dict):
            for key in ("base_model", "base", "model"):
                if isinstance(holder.get(key), str):
                    return holder[key]
    return None


@handle_errors
def forgetting(
    model: Path = typer.Option(
        ..., "--model", help="Fine-tuned model (or any encoder of the same architecture); text or image."
    ),
    out: Path = typer.Option(..., "--out", help="Output directory: forgetting.json, report.html/.md."),
    base: str | None = typer.Option(
        None, "--base", help="Base model (catalog name or directory); default: from training_summary.json."
    ),
    source: str | None = typer.Option(
        None, "--source",
        help="Source set: builtin:NAME, prepared dataset dir, or .csv/.parquet/.jsonl with text_a,text_b,score | "
             "text,label | text; image models: a prepared image dataset dir, builtin:digits|mnist-5k|fashion-mnist "
             "or .parquet with image[,label]. Default: the base model's catalog source (builtin:lee-similarity for "
             "minilm-l6, builtin:fashion-mnist for efficientnet-lite0).",
    ),
    mode: str | None = typer.Option(
        None, "--mode",
        help="similarity | source-task | representation-drift | perplexity (default: perplexity for decoder bases "
             "such as smollm2-135m, else from the source set; image models: source-task when the base head knows "
             "the source labels, else representation-drift).",
    ),
    metric: str | None = typer.Option(
        None, "--metric", help="pearson|spearman, accuracy|macro_f1, cka, inverse_perplexity."
    ),
    max_drop: float | None = typer.Option(None, "--max-drop", help="Fail when base - model score exceeds this."),
    min_retention: float | None = typer.Option(
        None, "--min-retention", help="Fail when model score / base score is below this."
    ),
    report_only: bool = typer.Option(False, "--report-only", help="Write results but never fail on the gate."),
    max_length: int | None = typer.Option(None, "--max-length", help="Truncation (default: base limit, <= 256)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Texts or images per forward pass."),
    probe_size: int = typer.Option(
        1000, "--probe-size", help="representation-drift: maximum probe texts; image models: maximum images."
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", help="Image models: input size instead of the base model's preprocessing size."
    ),
    unseen_task_papers: int = typer.Option(
        0, "--unseen-task-papers",
        help="Generative models: also score zero-shot title generation (ROUGE-L, base vs fine-tuned) on this many "
             "builtin:aclsum test abstracts; reported, not gated (0 = off).",
    ),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pickle weights (runs code on load)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Accept custom model code."),
) -> None:
    """Compare base and fine-tuned model on a source-task set; exit 3 when the forgetting gate fails."""
    from transferkit.errors import ConfigError
    from transferkit.evaluate import ForgettingConfig, check_forgetting

    base = base or _base_from_summary(model)
    if base is None:
        raise ConfigError(f"--base: not given and {model / 'training_summary.json'} does not name a base model")
    result = check_forgetting(ForgettingConfig(
        base=base, model=model, out_dir=out, source=source, mode=mode, metric=metric, max_drop=max_drop,
        min_retention=min_retention, max_length=max_length, batch_size=batch_size, probe_size=probe_size,
        image_size=image_size, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
        unseen_task_papers=unseen_task_papers,
    ))
    console.print(
        f"{result.mode} ({result.metric}): base {result.base_score:.4f} -> model {result.model_score:.4f}, "
        f"retention {result.retention:.4f}, drop {result.drop:.4f}"
    )
    unseen = result.details.get("unseen_task")
    if unseen:
        console.print(f"unseen task ({unseen['description']}): ROUGE-L base {unseen['base_rougeL']:.4f} -> model "
                      f"{unseen['model_rougeL']:.4f} on {unseen['n']} abstracts")
    console.print(f"wrote {result.forgetting_path} and {result.report_html}")
    if report_only:
        if not result.passed:
            console.print(f"report only, not failing: {result.reason}")
        return
    result.raise_if_failed()
