"""`transferkit prune`: structured pruning of a fine-tuned encoder, then a distillation recovery fine-tune."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from transferkit.cli._common import console, handle_errors


@handle_errors
def prune(
    model: Path = typer.Option(..., "--model", help="Fine-tuned model directory (`transferkit train` output)."),
    data: Path = typer.Option(..., "--data", help="Prepared dataset the model was trained on."),
    out: Path = typer.Option(..., "--out", help="Pruned model directory to write (replaced atomically on success)."),
    sparsity: float | None = typer.Option(None, "--sparsity",
                                          help="Fraction of encoder-layer parameters to remove, in (0, 1)."),
    keep_layers: int | None = typer.Option(None, "--keep-layers", help="Encoder layers to keep (bottom ones)."),
    keep_heads: int | None = typer.Option(None, "--keep-heads", help="Attention heads per layer to keep (only the "
                                          "model's own count: fewer heads cannot be saved in a BERT/ViT config)."),
    keep_ffn: int | None = typer.Option(None, "--keep-ffn", help="Feed-forward neurons per layer to keep."),
    distill_alpha: float = typer.Option(0.5, "--distill-alpha", help="Weight of the distillation KL (task loss: "
                                        "1 - alpha)."),
    distill_temperature: float = typer.Option(2.0, "--distill-temperature", help="Distillation temperature."),
    recovery_epochs: float = typer.Option(1.0, "--recovery-epochs", help="Epochs of recovery fine-tune (0: none)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Recovery optimizer steps (overrides epochs)."),
    learning_rate: float = typer.Option(5e-5, "--learning-rate", "--lr", help="Recovery learning rate."),
    batch_size: int = typer.Option(32, "--batch-size", help="Batch size of scoring and recovery."),
    importance_samples: int = typer.Option(512, "--importance-samples", help="Training rows scored for importance."),
    max_length: int | None = typer.Option(None, "--max-length", help="Token limit (default: the training run's)."),
    seed: int = typer.Option(42, "--seed", help="Seed of sampling, data order and dropout."),
    compare: bool = typer.Option(False, "--compare/--no-compare", help="Also export both models and report size, "
                                 "latency and test accuracy of fp32/int8 x unpruned/pruned with the Pareto front."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Prune whole layers and feed-forward neurons by gradient importance; recover by distillation."""
    from transferkit.prune import PruneConfig, prune_model

    config = PruneConfig(
        model_dir=model, data_dir=data, out_dir=out, sparsity=sparsity, keep_layers=keep_layers,
        keep_heads=keep_heads, keep_ffn=keep_ffn, distill_alpha=distill_alpha,
        distill_temperature=distill_temperature, recovery_epochs=recovery_epochs, max_steps=max_steps,
        learning_rate=learning_rate, batch_size=batch_size, importance_samples=importance_samples,
        max_length=max_length, seed=seed, compare=compare,
    )
    result = prune_model(config)
    if as_json:
        console.print_json(json.dumps(result.to_dict(), default=str))
        return
    plan = result.plan
    before = result.validation_before.get("accuracy", float("nan"))
    after = result.validation_after.get("accuracy", float("nan"))
    console.print(f"Wrote {result.out_dir}: {plan['keep_layers']} layers x {plan['keep_ffn']} feed-forward neurons, "
                  f"{100 * result.kept_parameter_fraction:.1f}% of encoder parameters kept; validation accuracy "
                  f"{before:.2%} -> {after:.2%}")
    for v in result.variants:
        console.print(f"  {v['name']:12s} {v['size_bytes'] / 1e6:6.1f} MB  {v['latency_ms']:6.1f} ms  "
                      f"accuracy {v['accuracy']:.2%}{'  (Pareto front)' if v['pareto'] else ''}")
    console.print(f"Report: {result.report_html}")
