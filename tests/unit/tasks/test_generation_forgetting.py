"""Forgetting of a fine-tuned generative model: perplexity of the model itself (its own LM head) on the offline
Lee reference texts against its base, and the gate on the retention (tiny random Llama, real aclsum pairs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.generative import aclsum_pairs, fine_tuned, tiny_llama
from transferkit.cli.main import app
from transferkit.errors import ConfigError, ForgettingGateError
from transferkit.evaluate import ForgettingConfig, check_forgetting
from transferkit.evaluate.sources import load_source

MAX_LENGTH = 48


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("gen-forgetting")
    base = tiny_llama(root / "base")
    data = aclsum_pairs(base, root / "data")
    return base, fine_tuned(data, base, root / "model"), data


def _perplexity(model_dir: Path) -> float:
    """Token-weighted perplexity, one unpadded text at a time, from transformers' own causal-LM loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for text in (t for t in load_source("builtin:lee-similarity").texts if t.strip()):
            ids = tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")["input_ids"]
            nll += float(lm(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            tokens += ids.shape[1] - 1
    return math.exp(nll / tokens)


def test_generative_model_is_measured_whole_and_gated_on_perplexity_retention(models: tuple[Path, Path, Path],
                                                                               tmp_path: Path) -> None:
    base, model, _ = models
    result = check_forgetting(ForgettingConfig(base=str(base), model=model, out_dir=tmp_path / "f",
                                               max_length=MAX_LENGTH, progress=False))
    assert result.mode == "perplexity" and result.passed
    assert result.details["head"] == "the fine-tuned model's own LM head"
    base_ppl, model_ppl = _perplexity(base), _perplexity(model)
    assert base_ppl != pytest.approx(model_ppl, rel=1e-3)  # three SFT steps moved the tied embeddings / LM head
    assert result.details["perplexity"]["base"] == pytest.approx(base_ppl, rel=1e-4)
    assert result.details["perplexity"]["model"] == pytest.approx(model_ppl, rel=1e-4)
    assert result.retention == pytest.approx(base_ppl / model_ppl, rel=1e-4)

    strict = ForgettingConfig(base=str(base), model=model, out_dir=tmp_path / "g", max_length=MAX_LENGTH,
                              min_retention=min(result.retention + 0.01, 1.5), progress=False)
    failed = check_forgetting(strict)
    assert not failed.passed and json.loads((tmp_path / "g" / "forgetting.json").read_text())["passed"] is False
    with pytest.raises(ForgettingGateError, match="retention"):
        failed.raise_if_failed()


def test_cli_takes_the_base_from_the_training_summary_and_exits_non_zero_below_the_threshold(
        models: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, model, data = models
    cli = CliRunner().invoke(app, ["forgetting", "--model", str(model), "--out", str(tmp_path / "f"),
                                   "--max-length", str(MAX_LENGTH), "--min-retention", "1.5",
                                   "--unseen-task-papers", "2"])
    assert cli.exit_code == ForgettingGateError.exit_code, cli.output
    assert "unseen task (title generation" in cli.output
    payload = json.loads((tmp_path / "f" / "forgetting.json").read_text())
    assert payload["mode"] == "perplexity" and payload["passed"] is False and payload["min_retention"] == 1.5
    with pytest.raises(ConfigError, match="is not a forgetting source set; the forgetting check of a generative "):
        load_source(str(data))


def test_unseen_task_probe_scores_zero_shot_title_generation_before_and_after(models: tuple[Path, Path, Path],
                                                                              tmp_path: Path) -> None:
    from transferkit.evaluate.forgetting_unseen import title_pairs
    from transferkit.evaluate.generation import summarize_outputs
    from transferkit.models.catalog import resolve_model

    base, model, _ = models
    result = check_forgetting(ForgettingConfig(base=str(base), model=model, out_dir=tmp_path / "f",
                                               max_length=MAX_LENGTH, unseen_task_papers=3, progress=False))
    unseen = result.details["unseen_task"]
    _, titles = title_pairs(3)
    assert unseen["n"] == 3 and len(set(titles)) == 3 and [e["title"] for e in unseen["examples"]] == titles
    for role in ("base", "model"):
        outputs = [e[role] for e in unseen["examples"]]
        assert all(len(o.split()) <= 24 for o in outputs)
        assert unseen[f"{role}_rougeL"] == pytest.approx(summarize_outputs(outputs, titles)[0]["rougeL"])
    assert json.loads((tmp_path / "f" / "forgetting.json").read_text())["details"]["unseen_task"]["n"] == 3
    assert "Unseen task (zero-shot, not gated)" in (tmp_path / "f" / "report.md").read_text()
    with pytest.raises(ConfigError, match="^unseen_task_papers: expected 0"):
        ForgettingConfig(base=str(base), model=model, out_dir=tmp_path / "g", unseen_task_papers=-1)
    with pytest.raises(ConfigError, match="^unseen_task_papers: the unseen-task probe applies to generative"):
        check_forgetting(ForgettingConfig(base="minilm-l6", model=resolve_model("minilm-l6").path,
                                          out_dir=tmp_path / "h", unseen_task_papers=2))
    assert not (tmp_path / "h").exists()
