"""space.yaml validation: a valid file parses; every bad key fails with one line naming the file and the key."""

import pytest

from transferkit.errors import ConfigError
from transferkit.tune.space import load_space, parse_space

VALID = """
objective: f1_macro
fixed:
  strategy: full
  max_length: 64
params:
  learning_rate: {low: 1e-5, high: 2.0e-4, log: true}
  llrd: {low: 0.6, high: 1.0}
  epochs: {low: 1, high: 3, step: 1}
  batch_size: {low: 8, high: 32, step: 8}
  l2sp: {choices: [0.0, 0.01, 0.1]}
"""


def test_a_valid_space_parses_with_types_from_train_config(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(VALID)
    space = load_space(path)
    kinds = {p.name: p.kind for p in space.params}
    assert kinds == {"learning_rate": "float", "llrd": "float", "epochs": "float", "batch_size": "int",
                     "l2sp": "categorical"}
    lr = space.params[0]
    assert (lr.low, lr.high, lr.log) == (1e-5, 2e-4, True)  # "1e-5" is text to PyYAML: read as a number
    assert space.directions == ["maximize"] and space.fixed == {"strategy": "full", "max_length": 64}
    assert parse_space({"objective": "loss", "retention": True, "params": {"llrd": {"low": 0.5, "high": 1}}}
                       ).directions == ["minimize", "maximize"]


@pytest.mark.parametrize(("payload", "message"), [
    ([1, 2], "s.yaml: expected a mapping"),
    ({"params": {}}, "s.yaml: params: at least one searched option"),
    ({"parms": {}}, "s.yaml: parms: unknown key"),
    ({"objective": "auc", "params": {"llrd": {"low": 0.5, "high": 1}}}, "s.yaml: objective: expected one of"),
    ({"retention": "yes", "params": {"llrd": {"low": 0.5, "high": 1}}}, "s.yaml: retention: expected true or false"),
    ({"params": {"lr": {"low": 1, "high": 2}}}, "s.yaml: params.lr: not a train option"),
    ({"params": {"out_dir": {"choices": ["a"]}}}, "s.yaml: params.out_dir: set by the tune command"),
    ({"params": {"llrd": {"low": 0.5}}}, "s.yaml: params.llrd.high: required"),
    ({"params": {"llrd": {"low": 0.9, "high": 0.5}}}, "s.yaml: params.llrd.high: must be greater than low"),
    ({"params": {"llrd": {"low": "x", "high": 1}}}, "s.yaml: params.llrd.low: expected a number"),
    ({"params": {"llrd": {"low": 0.5, "high": 1, "lgo": True}}}, "s.yaml: params.llrd.lgo: unknown key"),
    ({"params": {"llrd": {"low": 0, "high": 1, "log": True}}}, "s.yaml: params.llrd.low: a log range needs low > 0"),
    ({"params": {"batch_size": {"low": 8.5, "high": 32}}}, "s.yaml: params.batch_size.low: batch_size is an integer"),
    ({"params": {"llrd": {"choices": []}}}, "s.yaml: params.llrd.choices: expected a non-empty list"),
    ({"params": {"strategy": {"low": 1, "high": 2}}}, "s.yaml: params.strategy.type: strategy is a str option"),
    # Values are checked by TrainConfig itself: the message names the parameter and TrainConfig's reason.
    ({"params": {"llrd": {"low": 0.5, "high": 1.5}}}, "s.yaml: params.llrd: 1.5 is not valid (llrd: expected"),
    ({"params": {"strategy": {"choices": ["full", "frozen"]}}}, "s.yaml: params.strategy: 'frozen' is not valid"),
    ({"fixed": {"strategy": "full", "unfreeze_top_layers": 2}, "params": {"llrd": {"low": 0.5, "high": 1}}},
     "s.yaml: fixed: unfreeze_top_layers: only applies"),
    ({"fixed": {"llrd": 0.9}, "params": {"llrd": {"low": 0.5, "high": 1}}}, "s.yaml: params.llrd: also in fixed"),
])
def test_bad_spaces_fail_with_one_line_naming_the_key(payload, message):
    with pytest.raises(ConfigError) as info:
        parse_space(payload, source="s.yaml")
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_and_invalid_yaml_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_space(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  llrd: {low: 0.5, high: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+ invalid YAML"):
        load_space(bad)
