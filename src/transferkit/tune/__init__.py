"""Hyperparameter search over the fine-tune step: Optuna locally (this package), Katib on a cluster.

Entry point: :func:`run_search` with a :class:`TuneConfig`; the search space file is described in
:mod:`transferkit.tune.space`. Optuna and torch are imported only when a search runs.
"""

from transferkit.tune.search import TuneConfig, TuneResult, load_best_config, run_search
from transferkit.tune.space import Param, SearchSpace, load_space, parse_space

__all__ = ["Param", "SearchSpace", "TuneConfig", "TuneResult", "load_best_config", "load_space", "parse_space",
           "run_search"]
