"""The search space as Katib parameters, and Katib's best trial back into train options."""

import json

import pytest

from transferkit.errors import ConfigError, TuneError
from transferkit.tune.katib import KatibConfig, katib_parameters, trial_function_args, write_best_config
from transferkit.tune.space import parse_space


def test_ranges_and_choices_become_katib_parameter_specs():
    space = parse_space({"fixed": {"strategy": "full", "max_length": 64}, "params": {
        "learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}, "llrd": {"low": 0.5, "high": 1.0},
        "batch_size": {"low": 8, "high": 32, "step": 8}, "scheduler": {"choices": ["linear", "cosine"]}}})
    specs = {name: spec.to_dict() for name, spec in katib_parameters(space).items()}
    assert specs["learning_rate"]["feasibleSpace"] == {"min": "1e-05", "max": "0.001", "distribution": "logUniform"}
    assert specs["llrd"]["parameterType"] == "double"
    assert specs["batch_size"] == {"parameterType": "int", "feasibleSpace": {
        "min": "8", "max": "32", "step": "8", "distribution": "uniform"}}
    assert specs["scheduler"]["feasibleSpace"]["list"] == ["linear", "cosine"]


def test_trial_arguments_carry_the_fixed_options_and_a_flag_per_parameter(tmp_path):
    space = parse_space({"retention": True, "fixed": {"strategy": "full", "max_length": 64},
                         "params": {"learning_rate": {"low": 1e-5, "high": 1e-3}}})
    config = KatibConfig(data="s3://bucket/movies", model="minilm-l6", space=tmp_path / "s.yaml", out_root="/mnt/o",
                         forgetting_source="stsb")
    args = trial_function_args(config, space)
    assert args["train_args"][:6] == ["--data", "s3://bucket/movies", "--model", "minilm-l6", "--strategy", "full"]
    assert "--out" not in args["train_args"] and "--max-length" in args["train_args"]
    assert args["flags"] == {"learning_rate": "--learning-rate"}
    assert args["forgetting_args"] == ["--base", "minilm-l6", "--source", "stsb"]


def test_the_best_trial_is_written_in_the_local_search_format(tmp_path):
    space = parse_space({"fixed": {"strategy": "feature_extraction"}, "params": {
        "epochs": {"low": 1, "high": 3, "step": 1}, "batch_size": {"choices": [16, 32]}}})
    config = KatibConfig(data="/d", model="minilm-l6", space=tmp_path / "s.yaml", out_root="/o")
    payload = write_best_config(config, space, "exp1", {"epochs": "2.0", "batch_size": "32"},
                                {"accuracy": 0.8, "loss": 0.4}, tmp_path)
    written = json.loads((tmp_path / "best_config.json").read_text())
    assert written == payload and written["train_options"]["batch_size"] == 32
    assert written["train_options"]["epochs"] == 2.0 and written["value"] == 0.8
    with pytest.raises(TuneError, match=r"params.batch_size: Katib returned '64', not one of the choices"):
        write_best_config(config, space, "exp1", {"epochs": "2", "batch_size": "64"}, {"accuracy": 0.8}, tmp_path)
    with pytest.raises(TuneError, match="best trial reported no accuracy metric"):
        write_best_config(config, space, "exp1", {"epochs": "2", "batch_size": "16"}, {"loss": 0.4}, tmp_path)


def test_bad_katib_options_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"^nodes: expected an integer >= 1, got 0$"):
        KatibConfig(data="/d", model="m", space=tmp_path / "s.yaml", out_root="/o", nodes=0)
    with pytest.raises(ConfigError, match=r"^data: '/d/`id`' contains '`'"):
        KatibConfig(data="/d/`id`", model="m", space=tmp_path / "s.yaml", out_root="/o")
