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
