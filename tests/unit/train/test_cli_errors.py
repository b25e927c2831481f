"""Bad inputs to `transferkit train`: one-line errors, non-zero exit, nothing written."""

import json
import shlex
import sys
import types

import pytest
from typer.testing import CliRunner

from tests.helpers import write_movie_slice
from transferkit.cli.main import app

runner = CliRunner()


def _has_cuda():
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_movie_slice(tmp_path_factory.mktemp("movie"), train=16, validation=8, test=8)


@pytest.fixture(scope="module")
def three_class_model(tmp_path_factory):
    """A real classifier whose head has labels that differ from the movie data's."""
    from transferkit.models.loading import load_sequence_classifier, load_tokenizer

    path = tmp_path_factory.mktemp("clf")
    load_sequence_classifier("minilm-l6", ["anger", "joy", "fear"]).save_pretrained(path)
    load_tokenizer("minilm-l6").save_pretrained(path)
    return path


def _run(args):
    return runner.invoke(app, ["train", *args])


def _error_line(result):
    text = (result.stderr or "").strip() or result.output.strip()
    lines = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, text
    return lines[0]


def _assert_nothing_written(out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("--strategy finetune", "error: strategy: unknown value 'finetune'; expected one of full, feature_extraction"),
        ("--strategy full --learning-rate 0", "error: learning_rate: expected a positive number, got 0.0"),
        ("--strategy full --learning-rate -0.001", "error: learning_rate: expected a positive number"),
        ("--strategy full --epochs 0", "error: epochs: expected a positive number, got 0.0"),
        ("--strategy full --batch-size 0", "error: batch_size: expected a positive number, got 0"),
        ("--strategy full --batch-size -4", "error: batch_size: expected a positive number, got -4"),
        ("--strategy full --max-steps 0", "error: max_steps: expected a positive number, got 0"),
        ("--strategy full --max-length 1000", "error: max_length: 1000 exceeds the model's limit of 512 tokens"),
        ("--strategy feature_extraction --unfreeze-top-layers 9",
         "error: unfreeze_top_layers: 9 exceeds the model's 6 layers"),
        ("--strategy full --unfreeze-top-layers 2",
         "error: unfreeze_top_layers: only applies to strategy feature_extraction"),
        pytest.param("--strategy full --precision fp16", "error: precision: fp16 needs a CUDA GPU",
                     marks=pytest.mark.skipif(_has_cuda(), reason="fp16 is valid on a CUDA machine")),
        ("--strategy full --nproc-per-node 0", "error: nproc_per_node: expected an integer >= 1, got 0"),
        ("--strategy full --lora-rank 4", "error: lora_rank: only applies to strategy lora, not full"),
        ("--strategy feature_extraction --dora", "error: dora: only applies to strategy lora, not feature_extraction"),
        ("--strategy lora --lora-rank 0", "error: lora_rank: expected an integer >= 1, got 0"),
        ("--strategy lora --lora-rank -8", "error: lora_rank: expected an integer >= 1, got -8"),
        ("--strategy lora --lora-target q_proj",
         "error: lora_target: no linear module 'q_proj' in BertForSequenceClassification; its modules"),
        pytest.param("--strategy lora --quantize-base 4bit", "error: quantize_base: 4bit (QLoRA) needs a CUDA GPU",
                     marks=pytest.mark.skipif(_has_cuda(), reason="QLoRA is valid on a CUDA machine")),
    ],
)
def test_bad_options(data, tmp_path, extra, expected):
    out = tmp_path / "model"
    result = _run(["--data", str(data), "--model", "minilm-l6", "--out", str(out), *shlex.split(extra)])
    assert result.exit_code != 0
    assert _error_line(result).startswith(expected)
    _assert_nothing_written(out)


def test_prepared_dir_missing_files(data, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("train.parquet", "labels.json", "schema.json"):
        (broken / name).write_bytes((data / name).read_bytes())
    out = tmp_path / "model"
    result = _run(["--data", str(broken), "--model", "minilm-l6", "--strategy", "full", "--out", str(out)])
    assert result.exit_code != 0
    assert _error_line(result) == (
        f"error: {broken}: not a prepared dataset, missing validation.parquet, test.parquet"
    )
    _assert_nothing_written(out)


def test_label_ids_outside_labels_json(data, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad"
    bad.mkdir()
    for file in data.iterdir():
        (bad / file.name).write_bytes(file.read_bytes())
    (bad / "labels.json").write_text(json.dumps(["negative", "positive"]))
    table = pq.read_table(bad / "train.parquet")
    labels = table.column("label").to_pylist()
    labels[2] = 3
    pq.write_table(table.set_column(table.column_names.index("label"), "label", pa.array(labels, pa.int64())),
                   bad / "train.parquet")
    out = tmp_path / "model"
    result = _run(["--data", str(bad), "--model", "minilm-l6", "--strategy", "full", "--out", str(out)])
    assert result.exit_code != 0
    assert "train.parquet: row 2: label 3 is not an id in labels.json (0..1)" in _error_line(result)
    _assert_nothing_written(out)


def test_off_the_shelf_needs_a_matching_head_or_an_embedding_model(data, three_class_model, tmp_path):
    out = tmp_path / "model"
    result = _run(["--data", str(data), "--model", str(three_class_model), "--strategy", "off_the_shelf",
                   "--out", str(out)])
    assert result.exit_code != 0
    line = _error_line(result)
    assert "off_the_shelf needs a head whose labels match labels.json ['negative', 'positive']" in line
    assert "(model head: ['anger', 'joy', 'fear'])" in line
    _assert_nothing_written(out)


def test_unknown_model(data, tmp_path):
    out = tmp_path / "model"
    result = _run(["--data", str(data), "--model", "no-such-model", "--strategy", "full", "--out", str(out)])
    assert result.exit_code != 0
    assert _error_line(result).startswith("error: model 'no-such-model': not a catalog name")
    _assert_nothing_written(out)


def test_image_model_on_text_data(data, tmp_path):
    out = tmp_path / "model"
    result = _run(["--data", str(data), "--model", "efficientnet-lite0", "--strategy", "full", "--out", str(out)])
    assert result.exit_code == 2
    assert _error_line(result).startswith("error: model 'efficientnet-lite0' is for image-classification; the data in ")
    assert _error_line(result).endswith("is for text-classification")
    _assert_nothing_written(out)


def test_trainjob_launcher_unavailable(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transferkit.train.trainjob", None)
    out = tmp_path / "model"
    result = _run(["--data", str(data), "--model", "minilm-l6", "--strategy", "full", "--out", str(out),
                   "--launcher", "trainjob", "--nodes", "2"])
    assert result.exit_code != 0
    assert _error_line(result).startswith("error: --launcher trainjob: the trainjob launcher is unavailable")
    _assert_nothing_written(out)


def test_trainjob_launcher_gets_the_train_options_without_launcher_options(data, tmp_path, monkeypatch):
    calls = []

    def submit_train_job(train_args, **kwargs):
        calls.append((train_args, kwargs))
        return {"name": "tk-train-1", "phase": "Complete"}

    monkeypatch.setitem(sys.modules, "transferkit.train.trainjob",
                        types.SimpleNamespace(submit_train_job=submit_train_job))
    out = tmp_path / "model"
    result = _run(["--data", str(data), "--model", "minilm-l6", "--strategy", "full", "--out", str(out),
                   "--llrd", "0.9", "--l2sp", "0.01", "--no-group-by-length", "--launcher", "trainjob", "--nodes", "3",
                   "--gpus-per-node", "4", "--namespace", "ml", "--checkpoint-pvc", "ckpt", "--no-wait", "--json"])
    assert result.exit_code == 0, result.output
    (args, kwargs), = calls
    assert kwargs == {"nodes": 3, "gpus_per_node": 4, "namespace": "ml", "checkpoint_pvc": "ckpt",
                      "output_pvc": None, "wait": False, "timeout_s": 86400.0}
    assert args[:8] == ["--data", str(data), "--model", "minilm-l6", "--strategy", "full", "--out", str(out)]
    assert {"--llrd", "0.9", "--l2sp", "0.01", "--no-group-by-length"} <= set(args)
    for flag in ("--launcher", "--nodes", "--gpus-per-node", "--namespace", "--checkpoint-pvc", "--json", "--wait",
                 "--no-wait", "--nproc-per-node"):
        assert flag not in args
    assert json.loads(result.output.strip().splitlines()[-1])["name"] == "tk-train-1"
    _assert_nothing_written(out)


def test_smollm2_without_its_converted_weights_is_one_line(data, tmp_path, monkeypatch):
    """A cache where setup never converted the GGUF file: the error says how to get the weights."""
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "empty-cache"))
    out = tmp_path / "model"
    result = _run(["--data", str(data), "--model", "smollm2-135m", "--strategy", "lora", "--out", str(out)])
    assert result.exit_code != 0
    line = _error_line(result)
    assert line.startswith("error: smollm2-135m: converted weights not found in ") and "run `make setup`" in line
    _assert_nothing_written(out)
