"""The pipeline's tune step: off without a space; its options override fine_tune's parameters."""

import json

import pytest

from tests.helpers import write_movie_slice
from transferkit.errors import ConfigError
from transferkit.train.step import config_from_parameters
from transferkit.tune.step import parse_tuned_options, read_tuned_config, tune_step


def test_an_empty_space_turns_the_step_off(tmp_path):
    result = tune_step(tmp_path / "data", tmp_path / "out", base_model="minilm-l6", space="  ", trials=12, seed=0)
    assert result == {"train_options": {}, "value": None, "objective": None}
    assert not (tmp_path / "out" / "search").exists()


def test_tuned_options_override_the_component_parameters_but_not_the_strategy(tmp_path):
    data = write_movie_slice(tmp_path / "data", train=8, validation=4, test=4)
    params = {"base_model": "minilm-l6", "strategy": "full", "learning_rate": 0.0, "llrd": 1.0, "epochs": 3.0,
              "warmup_ratio": -1.0}
    tuned = json.dumps({"learning_rate": 3e-5, "llrd": 0.8, "warmup_ratio": 0.1})
    config = config_from_parameters(data, tmp_path / "m", {**params, "tuned_options": tuned})
    assert (config.learning_rate, config.llrd, config.warmup_ratio, config.epochs) == (3e-5, 0.8, 0.1, 3.0)
    assert config.strategy == "full"
    untouched = config_from_parameters(data, tmp_path / "m", {**params, "tuned_options": ""})
    assert (untouched.learning_rate, untouched.llrd, untouched.warmup_ratio) == (None, 1.0, None)
    with pytest.raises(ConfigError, match=r"^llrd: "):
        config_from_parameters(data, tmp_path / "m", {**params, "tuned_options": json.dumps({"llrd": 7})})


def test_bad_tuned_options_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"^tuned_options: not JSON \("):
        parse_tuned_options("{lr: 1")
    with pytest.raises(ConfigError, match=r"^tuned_options: expected a JSON object of train options, got list$"):
        parse_tuned_options("[1]")
    with pytest.raises(ConfigError, match=r"^tuned_options.strategy: set by the pipeline, not by the search$"):
        parse_tuned_options('{"strategy": "full"}')


def test_the_component_shim_returns_no_options_when_off(tmp_path, repo_root):
    import sys

    from kfp import dsl

    sys.path.insert(0, str(repo_root))
    from components.tune_search.component import tune_search

    best = dsl.Artifact(uri=str(tmp_path / "best_config"), metadata={})
    dataset = dsl.Dataset(uri=str(tmp_path / "data"), metadata={})
    outputs = tune_search.python_func(dataset=dataset, best_config=best, space="", trials=3, seed=0)
    assert outputs.train_options == ""
    assert json.loads((tmp_path / "best_config").read_text())["train_options"] == {}
    assert best.metadata == {"objective": "", "value": 0.0}


def test_the_best_config_artifact_overrides_the_parameters_and_bad_files_are_one_line_errors(tmp_path):
    data = write_movie_slice(tmp_path / "data", train=8, validation=4, test=4)
    params = {"base_model": "minilm-l6", "strategy": "full", "llrd": 1.0, "epochs": 3.0}
    best = tmp_path / "best_config"
    best.write_text(json.dumps({"train_options": {"llrd": 0.7}, "value": 0.8, "objective": "accuracy"}))
    config = config_from_parameters(data, tmp_path / "m", {**params, "tuned_options": '{"llrd": 0.9}',
                                                           "tuned_config": str(best)})
    assert config.llrd == 0.7 and config.strategy == "full"
    off = tmp_path / "off"
    off.write_text(json.dumps({"train_options": {}, "value": None, "objective": None}))
    assert read_tuned_config(off) == {} and read_tuned_config("") == {}
    (tmp_path / "bad").write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad: not a tune step's best_config \("):
        read_tuned_config(tmp_path / "bad")
    (tmp_path / "list").write_text(json.dumps({"train_options": [1]}))
    with pytest.raises(ConfigError, match=r"list: train_options: expected a JSON object of train options$"):
        read_tuned_config(tmp_path / "list")
