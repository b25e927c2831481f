"""A summarization run through the pipeline's components (their Python functions, as kfp.local runs them):
data_prep -> fine_tune (lora and full) -> forgetting_check -> select_strategy -> evaluate -> deploy_gate, on the
tiny random Llama and real builtin:aclsum pairs; the deploy decision of a generative run is the classifier's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Markdown, Metrics, Model

from components.data_prep.component import data_prep
from components.deploy_gate.component import deploy_gate
from components.evaluate.component import evaluate
from components.fine_tune.component import fine_tune
from components.forgetting_check.component import forgetting_check
from components.select_strategy.component import select_strategy
from tests.generative import MAX_LENGTH, tiny_llama


def _outputs(root: Path, *names: str) -> dict[str, object]:
    kinds = {"metrics": Metrics, "report": HTML, "report_md": Markdown, "classification_metrics": ClassificationMetrics,
             "decision": Markdown, "comparison": Markdown}
    root.mkdir(parents=True, exist_ok=True)
    suffix = {HTML: ".html", Markdown: ".md", Metrics: ".json", ClassificationMetrics: ".json"}
    return {name: kinds[name](uri=str(root / f"{name}{suffix[kinds[name]]}")) for name in names}


def test_summarization_flows_through_the_components_to_the_deploy_decision(
        tmp_path: Path, one_torch_thread: None) -> None:
    base = tiny_llama(tmp_path / "base")
    dataset = Dataset(uri=str(tmp_path / "data"))
    n_labels = data_prep.python_func(dataset_uri="builtin:aclsum", dataset=dataset, task="summarization",
                                     model=str(base), max_length=MAX_LENGTH, max_rows=24, target_column="target",
                                     **_outputs(tmp_path / "prep", "metrics", "report", "report_md"))
    assert n_labels == 0 and json.loads((tmp_path / "data" / "schema.json").read_text())["task"] == "summarization"

    models, losses = [], []
    for strategy, lr in (("lora", 1e-2), ("full", 3e-3)):
        model = Model(uri=str(tmp_path / strategy))
        # The pipeline's defaults: preserve_source on (dropped for generative tasks), early stopping, no tuning.
        loss, name = fine_tune.python_func(dataset=dataset, model=model, base_model=str(base), strategy=strategy,
                                           max_steps=2, batch_size=4, max_length=MAX_LENGTH, learning_rate=lr,
                                           preserve_source=True, early_stopping_patience=2, max_new_tokens=6,
                                           **_outputs(tmp_path / f"ft-{strategy}", "metrics", "report"))
        assert name == strategy and loss > 0
        assert json.loads((tmp_path / strategy / "generation_config.json").read_text())["max_new_tokens"] == 6
        models.append(model)
        losses.append(loss)
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()

    passed, retention = forgetting_check.python_func(model=models[0], base_model=str(base), min_retention=0.5,
                                                     **_outputs(tmp_path / "fg", "metrics", "report"))
    forgetting = json.loads((tmp_path / "fg" / "forgetting" / "forgetting.json").read_text())
    assert forgetting["mode"] == "perplexity" and passed == forgetting["passed"]
    assert retention == pytest.approx(forgetting["retention"]) and 0.5 < retention < 1.5

    selected = Model(uri=str(tmp_path / "selected"))
    strategy, _, _ = select_strategy.python_func(
        models=models, strategies=["lora", "full"], validation_metrics=losses, forgetting_passed=[True, True],
        retentions=[1.0, 1.0], selected=selected, comparison=_outputs(tmp_path / "pick", "comparison")["comparison"])
    assert strategy == ["lora", "full"][losses.index(min(losses))]  # the validation loss: lower is better
    assert "validation loss" in (tmp_path / "pick" / "comparison.md").read_text()

    primary, accuracy = evaluate.python_func(
        model=selected, dataset=dataset,
        **_outputs(tmp_path / "ev", "metrics", "classification_metrics", "report", "report_md"))
    scores = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0.0 <= primary <= 1.0 and primary == pytest.approx(scores["rougeL"]) and accuracy == 0.0

    gate = _outputs(tmp_path / "gate", "decision")
    decision = tmp_path / "gate" / "decision.md"
    # A generative run deploys like a classifier when its gates hold (ROUGE-L threshold, forgetting, export).
    assert deploy_gate.python_func(primary=primary, min_primary=0.0, forgetting_passed=True, export_passed=True,
                                   task="summarization", **gate) is True
    assert "**Deploying** the summarization model." in decision.read_text()
    assert deploy_gate.python_func(primary=primary, min_primary=primary + 0.01, forgetting_passed=True,
                                   export_passed=True, task="summarization", **gate) is False
    assert "| FAIL |" in decision.read_text() and "**Not deploying**" in decision.read_text()
    assert deploy_gate.python_func(primary=0.9, min_primary=0.8, forgetting_passed=True, export_passed=True,
                                   **gate) is True
    assert "the text-classification model" in decision.read_text()


def test_demo_params_files_fit_the_compiled_pipeline(repo_root: Path) -> None:
    from transferkit.cli.pipeline import check_params, load_params

    params_dir = repo_root / "pipelines" / "transfer_learning" / "params"
    package = repo_root / "pipelines" / "transfer_learning" / "pipeline.yaml"
    for name in ("demo-vision.yaml", "demo-generative.yaml"):
        check_params(load_params(params_dir / name), package)  # raises on an unknown name, type or value
    generative = load_params(params_dir / "demo-generative.yaml")
    assert generative["task"] == "summarization" and generative["strategies"] == ["lora"]
    assert "demo-generative:" in (repo_root / "Makefile").read_text()
