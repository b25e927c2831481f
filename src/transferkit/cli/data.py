"""`transferkit data prepare`: validate, split and profile a labelled text or image dataset."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from transferkit.cli._common import console, handle_errors
from transferkit.errors import ConfigError
from transferkit.tasks import DEFAULT_TASK, task_names

app = typer.Typer(no_args_is_help=True)


@app.callback()
def _data() -> None:
    """Prepare datasets for the other steps."""


@app.command("prepare")
@handle_errors
def prepare(
    dataset: str = typer.Option(
        ..., "--dataset", help="Path (file, directory, or image folder with one sub-folder per class), "
        "s3://bucket/key or builtin:NAME."
    ),
    out: Path = typer.Option(..., "--out", help="Output directory (replaced atomically)."),
    task: str = typer.Option(DEFAULT_TASK, "--task", help=f"One of {', '.join(task_names())}."),
    text_column: str = typer.Option("text", "--text-column", help="Column holding the text."),
    text_pair_column: str | None = typer.Option(None, "--text-pair-column", help="Optional second text column."),
    label_column: str = typer.Option("label", "--label-column", help="Column with class names or integer ids."),
    image_column: str = typer.Option(
        "image", "--image-column", help="Images: column with image paths (relative to the table) or bytes."
    ),
    min_image_size: int = typer.Option(8, "--min-image-size", help="Images: smallest width and height (px)."),
    group_column: str | None = typer.Option(None, "--group-column", help="Optional slice column kept as 'group'."),
    split_column: str | None = typer.Option(
        None, "--split-column", help="Use your own split column (values train/validation/test)."
    ),
    validation_fraction: float = typer.Option(0.1, "--validation-fraction", help="Validation share (stratified)."),
    test_fraction: float = typer.Option(0.1, "--test-fraction", help="Test share (stratified)."),
    seed: int = typer.Option(42, "--seed", help="Seed for splitting, sampling and shuffling."),
    model: str = typer.Option("minilm-l6", "--model", help="Model whose tokenizer measures token lengths."),
    max_length: str = typer.Option("auto", "--max-length", help="Tokens per input for the truncation rate and "
                                   "the tokens kept per long-document choice, or auto (text classification: the 95th "
                                   "percentile of the training split, as training resolves it)."),
    max_rows: int | None = typer.Option(None, "--max-rows", help="Use a seeded sample of this many rows."),
    min_class_count: int = typer.Option(10, "--min-class-count", help="Smallest class size for stratifying."),
    source_column: str | None = typer.Option(None, "--source-column", help="Summarization: document column "
                                             "(default source)."),
    target_column: str | None = typer.Option(None, "--target-column", help="Summarization: summary column "
                                             "(default target)."),
    prompt_column: str | None = typer.Option(None, "--prompt-column", help="Instruction: prompt column "
                                             "(default prompt)."),
    response_column: str | None = typer.Option(None, "--response-column", help="Instruction: response column "
                                               "(default response)."),
    instruction_column: str | None = typer.Option(None, "--instruction-column", help="Generative tasks: per-row "
                                                  "instruction column."),
    instruction: str | None = typer.Option(None, "--instruction", help="Generative tasks: a fixed instruction "
                                           "put before every input."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of a summary."),
) -> None:
    """Validate, split (seeded, stratified) and profile a dataset into OUT."""
    from rich.table import Table

    from transferkit.data.prepare import DataPrepConfig, prepare_dataset
    from transferkit.tasks import get_task

    if max_rows is not None and max_rows < 1:
        # The config reads 0 as "not given" (the KFP component's unset value); on the command line it is a mistake.
        raise ConfigError(f"max_rows: expected a positive integer (leave --max-rows out for all rows), got {max_rows}")
    config = DataPrepConfig(
        dataset=dataset, out=out, task=task, text_column=text_column, text_pair_column=text_pair_column,
        label_column=label_column, group_column=group_column, split_column=split_column,
        validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed, model=model,
        max_length=max_length, max_rows=max_rows, min_class_count=min_class_count, image_column=image_column,
        min_image_size=min_image_size, source_column=source_column, target_column=target_column,
        prompt_column=prompt_column, response_column=response_column, instruction_column=instruction_column,
        instruction=instruction,
    )
    result = prepare_dataset(config)
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
        return
    table = Table(title=f"Prepared {dataset}", show_header=False)
    table.add_column("item")
    table.add_column("value")
    rows = result.rows
    table.add_row("rows (train / validation / test)", f"{rows['train']} / {rows['validation']} / {rows['test']}")
    if result.labels:
        shown = ", ".join(result.labels[:10]) + (" ..." if result.num_labels > 10 else "")
        table.add_row("labels", f"{result.num_labels}: {shown}")
    table.add_row("duplicates removed (leakage)", str(result.duplicates_removed))
    for item, value in get_task(result.task).summary_rows(result, config):
        table.add_row(item, value)
    table.add_row("output", str(result.out_dir))
    table.add_row("report", str(result.report_html))
    console.print(table)
    for warning in result.warnings:
        console.print(f"warning: {warning}", markup=False)
