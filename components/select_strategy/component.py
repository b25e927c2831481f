"""KFP component: pick the best fine-tuned model of a strategy sweep among those that kept their source skill."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Input, Markdown, Model, Output

from transferkit.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def select_strategy(
    models: Input[list[Model]],
    strategies: list[str],
    validation_metrics: list[float],
    forgetting_passed: list[bool],
    retentions: list[float],
    selected: Output[Model],
    comparison: Output[Markdown],
) -> NamedTuple("Selection", [("strategy", str), ("forgetting_passed", bool), ("retention", float)]):
    """Choose the best validation metric among candidates that passed the forgetting gate.

    Best is the highest, or the lowest for a metric where lower is better (the validation loss that selects
    generative models), as each model's ``training_summary.json`` names it.

    When none passed, the best candidate overall is selected and ``forgetting_passed`` is False, so
    the deploy gate blocks it while its evaluation still runs.

    Returns:
        The chosen strategy, whether it passed the forgetting gate, and its retention.
    """
    import json
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from transferkit.evaluate.metrics import LOWER_IS_BETTER

    def metric_name(model_dir: str) -> str:
        try:
            summary = json.loads((Path(model_dir) / "training_summary.json").read_text(encoding="utf-8"))
            return str(summary["best"]["metric"])
        except (OSError, ValueError, KeyError, TypeError):
            return "metric"

    names = {metric_name(m.path) for m in models}
    sign = -1.0 if names and names <= LOWER_IS_BETTER else 1.0
    candidates = list(zip(strategies, validation_metrics, forgetting_passed, retentions, models, strict=True))
    passing = [c for c in candidates if c[2]]
    best = max(passing or candidates, key=lambda c: sign * c[1])
    shutil.copytree(best[4].path, selected.path, dirs_exist_ok=True)
    selected.metadata.update({"strategy": best[0]})
    header = names.pop() if len(names) == 1 else "metric"
    lines = ["# Strategy sweep", "", f"| strategy | validation {header} | retention | forgetting gate | chosen |",
             "|---|---|---|---|---|"]
    for strategy, metric, passed, retention, _ in candidates:
        lines.append(f"| {strategy} | {metric:.4f} | {retention:.3f} | {'pass' if passed else 'FAIL'} | "
                     f"{'yes' if strategy == best[0] else ''} |")
    with open(comparison.path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return namedtuple("Selection", ["strategy", "forgetting_passed", "retention"])(best[0], bool(best[2]), best[3])
