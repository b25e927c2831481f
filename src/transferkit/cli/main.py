"""The ``transferkit`` command line: one subcommand per pipeline step."""

from __future__ import annotations

import typer

from transferkit import __version__
from transferkit.cli import (
    bench,
    data,
    deploy,
    evaluate,
    export,
    forgetting,
    models,
    monitor,
    pipeline,
    prune,
    registry,
    serve,
    train,
    tune,
)
from transferkit.cli._common import OneLineErrors
from transferkit.log import configure_logging

app = typer.Typer(
    name="transferkit",
    help="Transfer learning from a pre-trained model to a live Triton endpoint, as a KFP pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"transferkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print version."),
) -> None:
    configure_logging(verbose)


app.add_typer(data.app, name="data", help="Prepare a dataset: validate, split, profile.")
app.command("train", help="Fine-tune a base model with a transfer strategy.")(train.train)
app.command("evaluate", help="Evaluate a model on the test split; write metrics and a report.")(evaluate.evaluate)
app.command("forgetting", help="Measure catastrophic forgetting against the base model and gate on it.")(
    forgetting.forgetting
)
app.command("export", help="Export to ONNX with a parity gate and quantize with an accuracy gate.")(export.export)
app.command("prune", help="Prune a fine-tuned encoder (layers, feed-forward neurons) and distill it.")(prune.prune)
app.command("deploy", help="Publish an ONNX model to Triton (triton, gitops or kserve mode).")(deploy.deploy)
app.command("serve", help="Run a local Triton server over a model repository.")(serve.serve)
app.add_typer(pipeline.app, name="pipeline", help="Compile, run locally, or submit the KFP pipeline.")
app.add_typer(models.app, name="models", help="List and inspect the model catalog.")
app.add_typer(bench.app, name="bench", help="Benchmarks (serving load generator).")
app.add_typer(monitor.app, name="monitor", help="Drift monitoring of served traffic (service, baseline, feedback).")
app.add_typer(registry.app, name="registry", help="Versions registered in the Kubeflow Model Registry.")
app.command("tune", help="Hyperparameter search over train options with Optuna (resumable, pruned).")(tune.tune)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C before a command's own handler runs (while importing): still one line
        from transferkit.cli._common import print_error

        print_error("interrupted before the command started; nothing was written")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
