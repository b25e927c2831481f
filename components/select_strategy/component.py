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
    """Choose the highest validation metric among candidates that passed the forgetting gate.

    When none passed, the best candidate overall is selected and ``forgetting_passed`` is False, so
    the deploy gate blocks it while its evaluation still runs.

    Returns:
        The chosen strategy, whether it passed the forgetting gate, and its retention.
    """
    import shutil
    from collections import namedtuple

    candidates = list(zip(strategies, validation_metrics, forgetting_passed, retentions, models, strict=True))
    passing = [c for c in candidates if c[2]]
    best = max(passing or candidates, key=lambda c: c[1])
    shutil.copytree(best[4].path, selected.path, dirs_exist_ok=True)
    selected.metadata.update({"strategy": best[0]})
    lines = ["# Strategy sweep", "", "| strategy | validation metric | retention | forgetting gate | chosen |",
             "|---|---|---|---|---|"]
    for strategy, metric, passed, retention, _ in candidates:
        lines.append(f"| {strategy} | {metric:.4f} | {retention:.3f} | {'pass' if passed else 'FAIL'} | "
                     f"{'yes' if strategy == best[0] else ''} |")
    with open(comparison.path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return namedtuple("Selection", ["strategy", "forgetting_passed", "retention"])(best[0], bool(best[2]), best[3])
