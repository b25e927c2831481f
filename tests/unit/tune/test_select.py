"""Choosing the configuration: best trial for one objective; Pareto front + retention floor for two."""

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from transferkit.errors import TuneError
from transferkit.tune.search import select_trial
from transferkit.tune.space import parse_space

SPACE2 = parse_space({"retention": True, "params": {"llrd": {"low": 0.5, "high": 1.0}}})


def _study(points):
    study = optuna.create_study(directions=["maximize", "maximize"])
    for i, (metric, retention) in enumerate(points):
        study.add_trial(create_trial(values=[metric, retention], params={"llrd": 0.5 + i / 100},
                                     distributions={"llrd": FloatDistribution(0.5, 1.0)}))
    return study


def test_retention_floor_picks_the_best_metric_on_the_front_that_keeps_it():
    # (accuracy, retention): trial 3 is dominated by trial 1.
    study = _study([(0.86, 0.20), (0.84, 0.55), (0.80, 0.80), (0.83, 0.50)])
    chosen, front = select_trial(SPACE2, study, min_retention=0.5)
    assert front == [0, 1, 2]
    assert chosen.number == 1
    assert select_trial(SPACE2, study, min_retention=0.7)[0].number == 2
    assert select_trial(SPACE2, study, min_retention=None)[0].number == 0
    with pytest.raises(TuneError, match=r"keeps retention >= 0.9 \(best retention 0.800\)"):
        select_trial(SPACE2, study, min_retention=0.9)


def test_single_objective_takes_the_best_trial_and_refuses_an_empty_study():
    space = parse_space({"objective": "loss", "params": {"llrd": {"low": 0.5, "high": 1.0}}})
    study = optuna.create_study(direction="minimize", study_name="s")
    with pytest.raises(TuneError, match="study 's': no trial completed"):
        select_trial(space, study, None)
    for value in (0.7, 0.4, 0.9):
        study.add_trial(create_trial(value=value, params={"llrd": 0.6},
                                     distributions={"llrd": FloatDistribution(0.5, 1)}))
    chosen, front = select_trial(space, study, None)
    assert chosen.value == 0.4 and front == []


def test_the_untuned_configuration_is_the_catalog_defaults_when_inside_the_space(tmp_path):
    from transferkit.tune.search import TuneConfig, default_params

    config = TuneConfig(data_dir=tmp_path / "d", model="minilm-l6", space=tmp_path / "s.yaml", out_dir=tmp_path / "o")
    space = parse_space({"fixed": {"strategy": "feature_extraction"}, "params": {
        "head_learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "epochs": {"low": 2, "high": 12, "step": 1},
        "batch_size": {"choices": [16, 32]}, "llrd": {"low": 0.5, "high": 1.0}}})
    # minilm-l6's catalog entry: head lr 1e-3, batch 32; a frozen base trains 10 epochs; llrd's default is 1.0.
    assert default_params(config, space) == {"head_learning_rate": 1e-3, "epochs": 10.0, "batch_size": 32,
                                             "llrd": 1.0}
    outside = parse_space({"fixed": {"strategy": "feature_extraction"}, "params": {"epochs": {"low": 1, "high": 2}}})
    assert default_params(config, outside) is None
