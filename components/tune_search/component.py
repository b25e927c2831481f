"""KFP component: the optional hyperparameter search whose best options feed ``fine_tune``."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from transferkit.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def tune_search(
    dataset: Input[Dataset],
    best_config: Output[Artifact],
    base_model: str = "minilm-l6",
    space: str = "",
    trials: int = 12,
    seed: int = 42,
) -> NamedTuple("TuneOutputs", [("train_options", str)]):
    """Search train options with Optuna in this pod; "" for ``space`` turns the step off.

    Args:
        space: The text of a ``space.yaml`` (see ``transferkit tune``); "" = no search.
        trials: Trials to finish.

    Returns:
        The best trial's train options as JSON ("" when off), for ``fine_tune``'s ``tuned_options``.
    """
    import json
    from collections import namedtuple
    from pathlib import Path

    from transferkit.tune.step import tune_step

    result = tune_step(dataset.path, best_config.path + ".work", base_model=base_model, space=space, trials=trials,
                       seed=seed)
    Path(best_config.path).write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    best_config.metadata.update({"objective": result["objective"] or "", "value": result["value"] or 0.0})
    outputs = namedtuple("TuneOutputs", ["train_options"])
    return outputs(json.dumps(result["train_options"]) if result["train_options"] else "")
