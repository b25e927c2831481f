"""Data prep of the generative tasks: pairs from files and builtin:aclsum, token statistics, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from transferkit.cli.main import app
from transferkit.data.prepare import DataPrepConfig, prepare_dataset
from transferkit.data.prepared import load_prepared
from transferkit.data.prompts import PLAIN_SEPARATOR, first_sentence, fit, user_message
from transferkit.errors import ConfigError, DataError, PreparedDataError, SchemaError
from transferkit.tasks import get_task

runner = CliRunner()


def _pairs(n: int, *, prefix: str = "document") -> list[dict[str, str]]:
    return [{"doc": f"{prefix} {i} talks about topic {i % 7}. It has a second sentence with more words in it.",
             "summary": f"topic {i % 7} of {prefix} {i}"} for i in range(n)]


def _jsonl(path: Path, rows: list[dict[str, str]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_summarization_from_jsonl_with_a_fixed_instruction(tmp_path: Path) -> None:
    rows = _pairs(40)
    rows.append(dict(rows[0]))  # an exact duplicate: may leak into validation/test, must be removed there
    data = _jsonl(tmp_path / "d.jsonl", rows)
    result = prepare_dataset(DataPrepConfig(dataset=data, out=tmp_path / "out", task="summarization",
                                            source_column="doc", target_column="summary",
                                            instruction="Summarize in one line.", max_length=32))
    dataset = load_prepared(result.out_dir)
    assert get_task(dataset).name == "summarization" and dataset.labels == []
    assert json.loads((result.out_dir / "schema.json").read_text())["task"] == "summarization"
    assert sum(result.rows.values()) == 41 - result.duplicates_removed
    train = dataset.table("train")
    assert train.column_names == ["source", "instruction", "target"]
    assert set(train.column("instruction").to_pylist()) == {"Summarize in one line."}
    stats = json.loads(result.stats_path.read_text())["tokens"]
    # BERT's WordPiece (minilm-l6) has no chat template: plain prompt; prompts of ~30 tokens exceed 32 with the target.
    assert stats["chat_template"] is False
    assert stats["input_tokens"]["p50"] > stats["target_tokens"]["p50"] > 3
    assert 0 < stats["truncation_rate"] <= 1 and stats["input_truncation_rate"] > 0
    assert result.truncation_rate == stats["truncation_rate"] and result.warnings
    assert "Token lengths" in result.report_md.read_text()


def test_instruction_from_parquet_and_csv_with_an_instruction_column(tmp_path: Path) -> None:
    table = pa.table({"q": [f"What is {i} plus {i}?" for i in range(30)], "a": [str(2 * i) for i in range(30)],
                      "how": ["Answer with a number."] * 30,
                      "part": ["train"] * 20 + ["validation"] * 5 + ["test"] * 5})
    pq.write_table(table, tmp_path / "d.parquet")
    result = prepare_dataset(DataPrepConfig(dataset=str(tmp_path / "d.parquet"), out=tmp_path / "out",
                                            task="instruction", prompt_column="q", response_column="a",
                                            instruction_column="how", split_column="part"))
    assert result.rows == {"train": 20, "validation": 5, "test": 5}
    test = load_prepared(result.out_dir).table("test")
    assert set(test.column("instruction").to_pylist()) == {"Answer with a number."}
    csv = tmp_path / "d.csv"
    csv.write_text("prompt,response\n" + "".join(f"say {i},{i}\n" for i in range(30)), encoding="utf-8")
    result = runner.invoke(app, ["data", "prepare", "--dataset", str(csv), "--out", str(tmp_path / "out2"),
                                 "--task", "instruction", "--json"])
    assert result.exit_code == 0, result.output
    assert sum(load_prepared(tmp_path / "out2").table(s).num_rows for s in ("train", "validation", "test")) == 30


def test_builtin_aclsum_keeps_its_split_and_builds_aspect_pairs(tmp_path: Path) -> None:
    result = prepare_dataset(DataPrepConfig(dataset="builtin:aclsum", out=tmp_path / "out", task="summarization",
                                            max_length=512, token_sample_size=30))
    assert result.rows == {"train": 300, "validation": 150, "test": 300}
    assert result.duplicates_removed == 0
    test = load_prepared(result.out_dir).table("test")
    instructions = test.column("instruction").to_pylist()
    assert {i.split()[-4] for i in instructions} == {"challenge", "approach", "outcome"}
    assert instructions[0].startswith("In one sentence, summarize the ")
    source, target = test.column("source")[0].as_py(), test.column("target")[0].as_py()
    assert len(source.split()) > 3 * len(target.split()) > 0


def test_prompt_truncation_keeps_the_instruction_and_the_generation_prompt() -> None:
    prompt, target = list(range(100)), list(range(1000, 1020))
    fitted = fit(prompt, target, 64)
    assert len(fitted.prompt) + len(fitted.target) == 64 and fitted.target == target
    assert fitted.prompt[:10] == prompt[:10] and fitted.prompt[-16:] == prompt[-16:]
    long_target = fit(prompt[:10], list(range(200)), 64)
    assert long_target.prompt == prompt[:10] and long_target.target_cut == 146
    assert user_message("Do it.", "text") == "Do it.\n\ntext" and user_message("", "text") == "text"
    assert PLAIN_SEPARATOR.strip() == "### Response:"
    assert first_sentence("First one. Second one.") == "First one."
    assert first_sentence("No end") == "No end"


@pytest.mark.parametrize(("config", "error", "message"), [
    ({"task": "summarization", "prompt_column": "q"}, ConfigError,
     r"^prompt_column: not supported for task summarization; expected none$"),
    ({"task": "instruction", "source_column": "doc"}, ConfigError,
     r"^source_column: not supported for task instruction; expected none$"),
    ({"task": "summarization", "instruction": "x", "instruction_column": "y"}, ConfigError,
     r"^instruction: a fixed instruction and instruction_column exclude each other"),
    ({"task": "summarization", "text_pair_column": "b"}, ConfigError, r"^text_pair_column: not supported"),
    ({"task": "text-classification", "target_column": "summary"}, ConfigError,
     r"^target_column: not supported for task text-classification; expected none"),
    ({"task": "image-classification", "instruction": "x"}, ConfigError, r"^instruction: not supported for task "
     "image-classification"),
])
def test_options_that_do_not_apply_are_refused(tmp_path: Path, config: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        DataPrepConfig(dataset=str(tmp_path / "d.jsonl"), out=tmp_path / "out", **config)


def test_empty_targets_are_named_with_their_rows(tmp_path: Path) -> None:
    rows = _pairs(20)
    rows[3]["summary"] = "  "
    rows[7]["summary"] = ""
    data = _jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"d\.jsonl: row 4; \S*d\.jsonl: row 8: column 'summary' is empty in 2 "
                                        r"row\(s\); expected the reference summary$"):
        prepare_dataset(DataPrepConfig(dataset=data, out=tmp_path / "out", task="summarization",
                                       source_column="doc", target_column="summary"))
    assert not (tmp_path / "out").exists()


def test_bad_split_values_missing_columns_and_classification_builtins(tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("source,target,split\n" + "".join(f"doc {i} words words,sum {i},train\n" for i in range(5))
                   + "doc x,sum x,holdout\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"d\.csv: row 6: column 'split' holds 'holdout'; expected train, validation"):
        prepare_dataset(DataPrepConfig(dataset=str(csv), out=tmp_path / "o", task="summarization",
                                       split_column="split"))
    with pytest.raises(SchemaError, match=r"d\.csv: missing column\(s\) 'prompt', 'response'; columns present: "
                                          r"source, target, split$"):
        prepare_dataset(DataPrepConfig(dataset=str(csv), out=tmp_path / "o", task="instruction"))
    with pytest.raises(DataError, match=r"^builtin:movie-sentiment: a classification dataset .*; expected pairs for "
                                        r"--task summarization"):
        prepare_dataset(DataPrepConfig(dataset="builtin:movie-sentiment", out=tmp_path / "o", task="summarization"))
    with pytest.raises(DataError, match=r"^builtin:aclsum: a summarization dataset .*; expected --task summarization"):
        prepare_dataset(DataPrepConfig(dataset="builtin:aclsum", out=tmp_path / "o"))


def test_longer_targets_and_rows_over_the_context_warn_with_their_rows(tmp_path: Path) -> None:
    rows = _pairs(20)
    rows[2]["summary"] = "a summary that is much longer than the document it summarizes " * 3
    rows[5]["doc"] = "a very long document " * 150  # 600 words: beyond MiniLM's 512-token context
    data = _jsonl(tmp_path / "d.jsonl", rows)
    result = prepare_dataset(DataPrepConfig(dataset=data, out=tmp_path / "out", task="summarization",
                                            source_column="doc", target_column="summary", max_length=256))
    assert any(re.fullmatch(r"1 target\(s\) have more words than their source \(\S*d\.jsonl: row 3\); .*", w)
               for w in result.warnings)
    assert any(re.fullmatch(r"1 pair\(s\) exceed the model's context of 512 tokens and will be truncated "
                            r"\(\S*d\.jsonl: row 6\)", w) for w in result.warnings), result.warnings


def test_labels_minimum_is_a_task_property(tmp_path: Path) -> None:
    rows = _pairs(20)
    result = prepare_dataset(DataPrepConfig(dataset=_jsonl(tmp_path / "d.jsonl", rows), out=tmp_path / "out",
                                            task="summarization", source_column="doc", target_column="summary"))
    schema = json.loads(result.schema_path.read_text())
    schema["task"] = "text-classification"
    result.schema_path.write_text(json.dumps(schema))
    with pytest.raises(PreparedDataError, match=r"labels\.json: expected a JSON list of at least 2 label names "
                                                r"\(text-classification\)"):
        load_prepared(result.out_dir)


def test_plain_prompts_without_a_chat_template_mask_the_prompt() -> None:
    from transferkit.models.loading import load_tokenizer
    from transferkit.train.sft import PairSplit, TokenizedPairs, generation_settings

    tokenizer = load_tokenizer("minilm-l6")  # WordPiece, no chat template, no EOS: targets end with [SEP]
    split = PairSplit(["Answer briefly."], ["What is the capital of France?"], ["Paris"])
    row = TokenizedPairs(split, tokenizer, 64)[0]
    text = tokenizer.decode(row["input_ids"])
    assert text == "[CLS] answer briefly. what is the capital of france? # # # response : paris [SEP]"
    n_target = sum(label != -100 for label in row["labels"])
    assert tokenizer.decode(row["labels"][-n_target:]) == "paris [SEP]"
    assert row["labels"][:-n_target] == [-100] * (len(row["input_ids"]) - n_target)

    class Options:
        max_new_tokens, repetition_penalty, decoding, num_beams, temperature, top_p = 12, 1.1, "sampling", 4, 0.5, 0.8

    settings = generation_settings(Options, tokenizer)
    assert settings["eos_token_id"] == tokenizer.sep_token_id and settings["do_sample"] is True
    assert settings["num_beams"] == 1 and settings["temperature"] == 0.5 and settings["top_p"] == 0.8


@pytest.mark.parametrize("task", ["text-classification", "image-classification"])
def test_classification_refuses_generation_options(tmp_path: Path, task: str) -> None:
    from transferkit.train.config import TrainConfig

    config = TrainConfig(data_dir=tmp_path / "d", model="m", strategy="full", out_dir=tmp_path / "o",
                         max_new_tokens=32)
    with pytest.raises(ConfigError, match=rf"^max_new_tokens: applies to generative tasks \(summarization, "
                                          rf"instruction\), not {task}$"):
        get_task(task).training(config, None, None)
