"""The task registry: identity read from names, prepared datasets, model directories and the catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import MOVIE_LABELS, write_image_model, write_movie_slice
from transferkit.data.prepared import load_prepared
from transferkit.errors import ConfigError, PreparedDataError
from transferkit.export.config import variant_plan
from transferkit.tasks import DEFAULT_TASK, Task, find_task, get_task, model_task, register_task, task_names
from transferkit.tasks.image_classification import IMAGE_CLASSIFICATION
from transferkit.tasks.text_classification import TEXT_CLASSIFICATION


def test_builtin_tasks_are_registered_in_order() -> None:
    assert task_names()[:2] == (TEXT_CLASSIFICATION, IMAGE_CLASSIFICATION)
    assert DEFAULT_TASK == TEXT_CLASSIFICATION
    assert get_task(TEXT_CLASSIFICATION) is find_task(TEXT_CLASSIFICATION)
    assert [t.name for t in (find_task("summarization"), find_task("instruction"))] == ["summarization",
                                                                                        "instruction"]
    assert find_task("regression") is None


def test_unknown_task_name_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match=r"'regression' is neither a task \(text-classification, "):
        get_task("regression")


def test_prepared_dataset_tells_its_task(tmp_path: Path) -> None:
    data = write_movie_slice(tmp_path / "movie", train=8, validation=4, test=4)
    assert get_task(load_prepared(data)).name == TEXT_CLASSIFICATION
    assert get_task(data).name == TEXT_CLASSIFICATION  # the directory: read from schema.json
    schema = json.loads((data / "schema.json").read_text())
    schema["task"] = "regression"
    (data / "schema.json").write_text(json.dumps(schema))
    with pytest.raises(PreparedDataError, match=r"schema.json: unknown task 'regression'; expected one of"):
        get_task(data)
    with pytest.raises(PreparedDataError, match=r"schema.json: unknown task 'regression'"):
        load_prepared(data)


def test_models_tell_their_task(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    assert model_task("minilm-l6").name == TEXT_CLASSIFICATION
    assert model_task("efficientnet-lite0").name == IMAGE_CLASSIFICATION
    image = write_image_model(tmp_path / "image", ["0", "1"])
    assert model_task(image).name == IMAGE_CLASSIFICATION
    text = tmp_path / "text"
    BertForSequenceClassification(BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=16,
                                             id2label=dict(enumerate(MOVIE_LABELS)))).save_pretrained(text)
    assert model_task(text).name == TEXT_CLASSIFICATION
    assert model_task(tmp_path / "missing") is None


def test_export_variants_come_from_the_task() -> None:
    assert variant_plan(TEXT_CLASSIFICATION, "cpu").build == ("int8",)
    assert variant_plan(TEXT_CLASSIFICATION, "cpu").preferences == ("int8", "fp32")
    assert variant_plan(IMAGE_CLASSIFICATION, "cpu").build == ("qdq", "int8")
    assert variant_plan(IMAGE_CLASSIFICATION, "cpu").candidates == ("qdq",)
    assert variant_plan(IMAGE_CLASSIFICATION, "gpu", "qdq").preferences == ("qdq", "fp16", "fp32")


def test_a_second_task_of_the_same_name_is_refused() -> None:
    class Clash(type(get_task(TEXT_CLASSIFICATION))):  # type: ignore[misc]
        pass

    with pytest.raises(ConfigError, match="already registered"):
        register_task(Clash())
    assert isinstance(get_task(TEXT_CLASSIFICATION), Task)


def test_export_task_finds_the_task_that_serves_its_own_exports(tmp_path):
    from transferkit.tasks import export_task

    for name in ("summarization", "instruction"):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "generation_spec.json").write_text(json.dumps({"kind": "generative", "task": name}))
        assert export_task(directory) is get_task(name)
    classifier = tmp_path / "classifier"
    classifier.mkdir()
    (classifier / "io_spec.json").write_text("{}")
    assert export_task(classifier) is None  # the shared classification repository
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "generation_spec.json").write_text("{not json")
    assert export_task(broken) is None and export_task(tmp_path / "missing") is None
