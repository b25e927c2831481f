"""The pipeline's optional ``tune`` step as a library call: search, then hand the best options to ``fine_tune``.

``components/tune`` passes its parameters to :func:`tune_step`; with an empty search space the step is off and
returns no options (``fine_tune`` then runs with its own parameters). Otherwise it runs the local Optuna search
(:func:`transferkit.tune.run_search`) in the step's pod and returns the best trial's train options as JSON, which
``fine_tune`` takes as ``tuned_options``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError

logger = logging.getLogger(__name__)

# Options that belong to the pipeline, not to the tuned configuration (the sweep picks the strategy).
NOT_TUNED = ("model", "metric", "data_dir", "out_dir", "strategy")


def tune_step(data_dir: str | Path, out_dir: str | Path, *, base_model: str, space: str, trials: int,
              seed: int) -> dict[str, Any]:
    """Run the search described by ``space`` (the text of a ``space.yaml``) or nothing when it is empty.

    Args:
        data_dir: The prepared dataset.
        out_dir: The step's output directory: ``space.yaml``, the search (``study.db``...), ``best_config.json``.
        base_model: The pipeline's base model.
        space: Search space YAML text; "" turns the step off.
        trials: Trials to finish.
        seed: Sampler seed.

    Returns:
        ``{"train_options": {...}, "value": ..., "objective": ...}``; ``train_options`` is empty when off.

    Raises:
        ConfigError: Bad space or options.
        TuneError: No trial completed.

    """
    from transferkit.tune import TuneConfig, run_search

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not space.strip():
        logger.info("tune step off (no search space): fine_tune runs with its own parameters")
        return {"train_options": {}, "value": None, "objective": None}
    space_file = out / "space.yaml"
    space_file.write_text(space, encoding="utf-8")
    result = run_search(TuneConfig(data_dir=Path(data_dir), model=base_model, space=space_file,
                                   out_dir=out / "search", trials=trials, seed=seed))
    shutil.copyfile(result.best_config_path, out / "best_config.json")
    options = {k: v for k, v in result.best["train_options"].items() if k not in NOT_TUNED}
    return {"train_options": options, "value": result.best["value"], "objective": result.objective,
            "finished": result.finished, "pruned": result.pruned}


def parse_tuned_options(text: str) -> dict[str, Any]:
    """The ``tuned_options`` parameter of ``fine_tune``: a JSON mapping of train options ("" = none).

    Raises:
        ConfigError: Not JSON, not a mapping, or it sets an option the pipeline owns.

    """
    if not text.strip():
        return {}
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"tuned_options: not JSON ({exc})") from None
    if not isinstance(options, dict):
        raise ConfigError(f"tuned_options: expected a JSON object of train options, got {type(options).__name__}")
    owned = sorted(set(options) & set(NOT_TUNED))
    if owned:
        raise ConfigError(f"tuned_options.{owned[0]}: set by the pipeline, not by the search")
    return options


def read_tuned_config(path: str | Path) -> dict[str, Any]:
    """The train options of the tune step's ``best_config`` artifact (``""`` = none).

    The pipeline passes the artifact rather than the ``train_options`` string output: inside a ``ParallelFor``,
    kfp.local resolves a string output of a task outside the loop to the loop item.

    Raises:
        ConfigError: The file is not a ``best_config`` written by the tune step.

    """
    if not str(path):
        return {}
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a tune step's best_config ({exc})") from None
    options = payload.get("train_options") if isinstance(payload, dict) else None
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: train_options: expected a JSON object of train options")
    return parse_tuned_options(json.dumps(options)) if options else {}
