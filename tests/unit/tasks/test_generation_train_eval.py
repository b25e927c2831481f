"""Generative tasks through the registry: prepare -> train (SFT, loss on targets only) -> evaluate (ROUGE).

The base is a tiny random LlamaForCausalLM built here with the offline MiniLM WordPiece tokenizer given a chat
template; the data are a few real builtin:aclsum pairs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.generative import tiny_llama as write_tiny_chat_llama
from transferkit.cli.main import app
from transferkit.data.prepare import DataPrepConfig, prepare_dataset
from transferkit.data.prepared import load_prepared
from transferkit.errors import ConfigError, EvaluationError, ModelError
from transferkit.evaluate.evaluation import EvaluateConfig, evaluate_model
from transferkit.tasks import get_task, model_task
from transferkit.train.config import TrainConfig
from transferkit.train.run import run_training, setup_run

MAX_LENGTH = 128


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    return write_tiny_chat_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def aclsum_slice(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("aclsum") / "prepared"
    result = prepare_dataset(DataPrepConfig(dataset="builtin:aclsum", out=out, task="summarization",
                                            model=str(tiny_llama), max_length=MAX_LENGTH, max_rows=24))
    assert all(n > 0 for n in result.rows.values())
    stats = json.loads(result.stats_path.read_text())["tokens"]
    assert stats["chat_template"] is True and stats["truncation_rate"] > 0  # abstracts exceed 128 tokens
    return out


def _train(data: Path, model: Path, out: Path, **options: object) -> object:
    values = {"max_steps": 3, "batch_size": 4, "max_length": MAX_LENGTH, "learning_rate": 3e-3, "max_new_tokens": 8,
              "logging_steps": 1, **options}
    return run_training(TrainConfig(data_dir=data, model=str(model), out_dir=out, **values))


def test_examples_mask_the_prompt_and_the_loss_covers_targets_only(tiny_llama: Path, aclsum_slice: Path,
                                                                   tmp_path: Path) -> None:
    import torch
    import torch.nn.functional as F

    from transferkit.data.prompts import prompt_ids, target_ids

    ctx = setup_run(TrainConfig(data_dir=aclsum_slice, model=str(tiny_llama), strategy="full",
                                out_dir=tmp_path / "m", max_length=MAX_LENGTH))
    side = ctx.side
    train, _ = side.datasets(ctx)
    row, split = train[0], ctx.train_split
    prompt = prompt_ids(side.tokenizer, split.instructions[0], split.sources[0])
    target = target_ids(side.tokenizer, split.labels[0])
    assert side.tokenizer.decode(prompt[-3:]).endswith("assistant :")  # the chat template's generation prompt
    n_prompt = len(row["input_ids"]) - len(target)
    assert len(row["input_ids"]) == MAX_LENGTH and n_prompt < len(prompt)  # the abstract was cut, not the target
    assert row["labels"][:n_prompt] == [-100] * n_prompt and row["labels"][n_prompt:] == target
    assert target[-1] == side.tokenizer.sep_token_id
    # The model's own loss equals cross-entropy over the (shifted) target tokens alone.
    model = side.build_model(ctx).eval()
    batch = side.collator("cpu")([train[0], train[1]])
    with torch.no_grad():
        out = model(**batch)
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
    manual = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss, manual, atol=1e-5)
    assert ctx.metric == "loss" and side.trainer_metrics() is None


def test_unset_max_length_is_the_p95_of_prompt_plus_target_not_the_catalog_default(tiny_llama: Path,
                                                                                     aclsum_slice: Path,
                                                                                     tmp_path: Path) -> None:
    import numpy as np

    from transferkit.data.prompts import prompt_ids, target_ids

    ctx = setup_run(TrainConfig(data_dir=aclsum_slice, model=str(tiny_llama), strategy="full",
                                out_dir=tmp_path / "m"))
    split, tokenizer = ctx.train_split, ctx.side.tokenizer
    lengths = [len(prompt_ids(tokenizer, i, s)) + len(target_ids(tokenizer, t))
               for i, s, t in zip(split.instructions, split.sources, split.labels, strict=True)]
    expected = min(int(np.ceil(np.percentile(lengths, 95) / 8) * 8), 256)  # the tiny Llama's 256 positions
    assert ctx.hp["max_length"] == expected and ctx.hp["max_length_source"] == "auto"
    assert ctx.hp["max_length"] > MAX_LENGTH  # whole abstracts, not a classification-sized cut
    given = setup_run(TrainConfig(data_dir=aclsum_slice, model=str(tiny_llama), strategy="full",
                                  out_dir=tmp_path / "g", max_length=96))
    assert given.hp["max_length"] == 96 and given.hp["max_length_source"] == "given"


def test_full_fine_tune_then_evaluate_with_lead_and_zero_shot_baselines(tiny_llama: Path, aclsum_slice: Path,
                                                                        tmp_path: Path) -> None:
    result = _train(aclsum_slice, tiny_llama, tmp_path / "model", strategy="full", decoding="beam", num_beams=2,
                    repetition_penalty=1.2)
    assert result.best_metric_name == "loss" and result.global_step == 3
    assert result.validation_metrics["perplexity"] == pytest.approx(math.exp(result.validation_metrics["loss"]))
    history = json.loads((tmp_path / "model" / "log_history.json").read_text())
    losses = [e["loss"] for e in history if "loss" in e]
    assert len(losses) == 3
    assert losses[-1] < losses[0]  # 3 steps at lr 3e-3 on the same few pairs: the target loss goes down
    generation = json.loads((tmp_path / "model" / "generation_config.json").read_text())
    assert generation["max_new_tokens"] == 8 and generation["num_beams"] == 2
    assert generation["repetition_penalty"] == 1.2 and generation["do_sample"] is False
    assert model_task(tmp_path / "model").name == "summarization"

    evaluation = evaluate_model(EvaluateConfig(model_dir=tmp_path / "model", data_dir=aclsum_slice,
                                               out_dir=tmp_path / "eval", progress=False, min_primary=0.0))
    n_test = load_prepared(aclsum_slice).table("test").num_rows
    assert evaluation.primary_metric == "rougeL" and evaluation.n_examples == n_test and evaluation.passed
    assert set(evaluation.scalars) == {"rouge1", "rouge2", "rougeL", "generated_words", "reference_words"}
    lead = evaluation.extra["lead_baseline"]["scalars"]
    assert 0.05 < lead["rougeL"] < 0.5  # the first sentence of a real abstract shares words with its summaries
    assert evaluation.baseline["mode"] == "zero_shot" and evaluation.baseline["model"] == str(tiny_llama)
    predictions = pq.read_table(tmp_path / "eval" / "predictions.parquet")
    assert predictions.num_rows == n_test
    assert {"source", "reference", "generated", "lead", "zero_shot", "rougeL"} <= set(predictions.column_names)
    assert all(len(g.split()) <= 8 for g in predictions.column("generated").to_pylist())
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "<th>zero-shot</th><th>fine-tuned</th>" in html and "lead (first sentence)" in html
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["primary"] == evaluation.primary and metrics["decoding"] == "beam"


def test_off_the_shelf_is_zero_shot_and_unsupported_strategies_are_refused(tiny_llama: Path, aclsum_slice: Path,
                                                                         tmp_path: Path) -> None:
    result = _train(aclsum_slice, tiny_llama, tmp_path / "zs", strategy="off_the_shelf")
    assert result.stop_reason == "no_training" and result.best_metric_name == "loss"
    assert result.validation_metrics["loss"] > 0
    assert json.loads((tmp_path / "zs" / "config.json").read_text())["transferkit_task"] == "summarization"
    for strategy, reason in (("feature_extraction", "no separate head"), ("scratch", "random weights")):
        with pytest.raises(ConfigError, match=rf"^strategy: {strategy} does not apply to task summarization: .*"
                                              rf"{reason}.*; use full"):
            _train(aclsum_slice, tiny_llama, tmp_path / strategy, strategy=strategy)
    with pytest.raises(ConfigError, match=r"^strategy: distill does not apply to task summarization: .*use full or "
                                          r"lora"):
        _train(aclsum_slice, tiny_llama, tmp_path / "distill", strategy="distill", teacher=tiny_llama)
    with pytest.raises(ConfigError, match=r"^class_weights: applies to classification"):
        _train(aclsum_slice, tiny_llama, tmp_path / "cw", strategy="full", class_weights="balanced")
    with pytest.raises(ConfigError, match=r"^metric: f1_macro does not apply to task summarization"):
        _train(aclsum_slice, tiny_llama, tmp_path / "f1", strategy="full", metric="f1_macro")
    with pytest.raises(ConfigError, match=r"^long_documents: applies to classification; the data in .* is for "
                                          r"summarization$"):
        _train(aclsum_slice, tiny_llama, tmp_path / "chunk", strategy="full", long_documents="chunk")
    with pytest.raises(ModelError, match=r"^model 'minilm-l6' is for text-classification; the data in .* is for "
                                         r"summarization"):
        _train(aclsum_slice, "minilm-l6", tmp_path / "bert", strategy="full")
    from transferkit.models.catalog import resolve_model

    with pytest.raises(ModelError, match=r"BertModel is not a causal language model; task summarization needs a "
                                         r"GPT-class base"):
        _train(aclsum_slice, resolve_model("minilm-l6").path, tmp_path / "bert", strategy="full")
    with pytest.raises(ModelError, match=r"BertModel is not a causal language model"):
        evaluate_model(EvaluateConfig(model_dir=tmp_path / "zs", data_dir=aclsum_slice, out_dir=tmp_path / "e",
                                      baseline="minilm-l6"))
    assert not (tmp_path / "e").exists()
    with pytest.raises(ConfigError, match=r"^top_p: expected a probability mass in \(0, 1\]"):
        TrainConfig(data_dir=aclsum_slice, model="m", strategy="full", out_dir=tmp_path / "x", top_p=0.0)
    with pytest.raises(EvaluationError, match=r"^primary_metric: 'macro_f1' does not apply to task summarization"):
        evaluate_model(EvaluateConfig(model_dir=tmp_path / "zs", data_dir=aclsum_slice, out_dir=tmp_path / "e",
                                      primary_metric="macro_f1"))
    cli = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path / "zs"), "--data", str(aclsum_slice),
                                   "--out", str(tmp_path / "cli-eval"), "--min-primary", "0.99"])
    assert cli.exit_code != 0 and "rougeL" in cli.output and "rouge2" in cli.output
    assert "evaluation gate failed: rougeL" in cli.output
    assert get_task(aclsum_slice).name == "summarization"
    with pytest.raises(Exception, match="export of generative models"):
        get_task(aclsum_slice).export_side(None, None)


def test_an_encoder_decoder_base_trains_as_seq2seq(tiny_llama: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    base = tmp_path / "tiny-t5"
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(base)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=16, num_layers=2, num_decoder_layers=2,
                      num_heads=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(base)
    data = tmp_path / "prepared"
    result = prepare_dataset(DataPrepConfig(dataset="builtin:aclsum", out=data, task="summarization",
                                            model=str(base), max_length=MAX_LENGTH, max_rows=15))
    stats = json.loads(result.stats_path.read_text())["tokens"]
    assert stats["seq2seq"] is True and stats["chat_template"] is False
    ctx = setup_run(TrainConfig(data_dir=data, model=str(base), strategy="full", out_dir=tmp_path / "m",
                                max_length=MAX_LENGTH))
    row = ctx.side.datasets(ctx)[0][0]
    assert -100 not in row["labels"] and row["labels"][-1] == tokenizer.sep_token_id  # the decoder sees the target
    assert row["input_ids"][0] == tokenizer.cls_token_id and len(row["input_ids"]) <= MAX_LENGTH
    trained = _train(data, base, tmp_path / "model", strategy="full", max_steps=2)
    assert trained.validation_metrics["loss"] > 0
    saved = json.loads((tmp_path / "model" / "generation_config.json").read_text())
    assert saved["decoder_start_token_id"] == tokenizer.pad_token_id
    evaluation = evaluate_model(EvaluateConfig(model_dir=tmp_path / "model", data_dir=data, out_dir=tmp_path / "e",
                                               progress=False))
    assert evaluation.n_examples == load_prepared(data).table("test").num_rows
    assert evaluation.baseline["model"] == str(base) and 0 <= evaluation.primary <= 1


def test_instruction_task_trains_and_evaluates_through_the_registry(tiny_llama: Path, tmp_path: Path) -> None:
    csv = tmp_path / "qa.csv"
    csv.write_text("question,answer,how\n" + "".join(f"What comes after {i}?,{i + 1},Answer with a number.\n"
                                                      for i in range(30)), encoding="utf-8")
    data = tmp_path / "prepared"
    prepare_dataset(DataPrepConfig(dataset=str(csv), out=data, task="instruction", prompt_column="question",
                                   response_column="answer", instruction_column="how", model=str(tiny_llama)))
    assert get_task(data).name == "instruction"
    _train(data, tiny_llama, tmp_path / "model", strategy="full", max_steps=2, max_length=64)
    assert model_task(tmp_path / "model").name == "instruction"
    evaluation = evaluate_model(EvaluateConfig(model_dir=tmp_path / "model", data_dir=data, out_dir=tmp_path / "e",
                                               progress=False, primary_metric="rouge1"))
    assert evaluation.primary_metric == "rouge1" and evaluation.n_examples == 3
    assert evaluation.extra["lead_baseline"]["scalars"]["rougeL"] == 0.0  # the question never holds the answer
