"""KFP component: validate, split and profile a labelled dataset (or the pairs of a generative task)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Markdown, Metrics, Output

from transferkit.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def data_prep(
    dataset_uri: str,
    dataset: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
    report_md: Output[Markdown],
    # A literal, not transferkit.tasks.DEFAULT_TASK: KFP ships this function's source alone into the container.
    task: str = "text-classification",
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str = "",
    group_column: str = "",
    split_column: str = "",
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 42,
    model: str = "minilm-l6",
    max_length: int = 0,
    max_rows: int = 0,
    source_column: str = "",
    target_column: str = "",
    prompt_column: str = "",
    response_column: str = "",
    instruction_column: str = "",
    instruction: str = "",
) -> int:
    """Prepare ``dataset_uri`` (path, ``s3://`` or ``builtin:NAME``) into train/validation/test Parquet.

    Args:
        dataset_uri: Source data URI.
        task: Task type: ``text-classification``, ``image-classification``, ``summarization`` or ``instruction``.
        text_column: Column with the text.
        label_column: Column with the labels.
        text_pair_column: Optional second text column ("" = none).
        group_column: Optional slice column for slice metrics ("" = none).
        split_column: Optional column holding train/validation/test ("" = seeded stratified split).
        validation_fraction: Validation share for the stratified split.
        test_fraction: Test share for the stratified split.
        seed: Split seed.
        model: Model whose tokenizer measures token lengths.
        max_length: Sequence length for the truncation rate and the tokens kept per long-document choice
            (0 = auto: the 95th percentile of the training split, as fine-tune resolves it).
        max_rows: Seeded sample size for quick runs (0 = all rows).
        source_column: summarization: column with the document ("" = ``source``).
        target_column: summarization: column with the reference summary ("" = ``target``).
        prompt_column: instruction: column with the prompt ("" = ``prompt``).
        response_column: instruction: column with the reference response ("" = ``response``).
        instruction_column: Generative tasks: optional column with a per-row instruction ("" = none).
        instruction: Generative tasks: optional fixed instruction before every input ("" = none).

    Returns:
        The number of classes (0 for the generative tasks).
    """
    import json
    import shutil
    from pathlib import Path

    from transferkit.data.prepare import DataPrepConfig, prepare_dataset

    result = prepare_dataset(DataPrepConfig(
        dataset=dataset_uri, out=dataset.path, task=task, text_column=text_column, label_column=label_column,
        text_pair_column=text_pair_column or None, group_column=group_column or None,
        split_column=split_column or None, validation_fraction=validation_fraction, test_fraction=test_fraction,
        seed=seed, model=model, max_length=max_length, max_rows=max_rows or None,
        source_column=source_column or None, target_column=target_column or None,
        prompt_column=prompt_column or None, response_column=response_column or None,
        instruction_column=instruction_column or None, instruction=instruction or None,
    ))
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    Path(metrics.path).write_text(json.dumps(metrics.metadata, indent=2), encoding="utf-8")
    shutil.copyfile(result.report_html, report.path)
    shutil.copyfile(result.report_md, report_md.path)
    dataset.metadata.update({"labels": result.labels, "rows": result.rows})
    return result.num_labels
