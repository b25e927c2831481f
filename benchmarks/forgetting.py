"""Accuracy / forgetting trade-off: minilm-l6 fine-tuned on movie sentiment, Lee similarity retention.

For each setting the target accuracy is measured on the test split (``evaluate_model``) and the
source-task retention on the Lee corpus (``check_forgetting``: Pearson of the fine-tuned encoder's
mean-pooled cosine similarities vs human scores, divided by the base model's 0.656).

Trained settings (``transferkit.train.run_training``, seeded 80/10/10 split, catalog defaults: 3 epochs,
lr 5e-5, head lr 1e-3, batch 32, max_length 64): ``full``, ``full --llrd 0.8``, ``full --l2sp A`` for a
small sweep of A, ``feature_extraction`` with 0 and 2 unfrozen top layers. Post-hoc settings re-use the
trained models: uniform WiSE-FT interpolation with the head kept (the known anchors), and
``--preserve-source`` (``transferkit.train.preserve``: layer-selective interpolation toward the base
weights + optional head re-fit, chosen on the validation split under a retention budget) for several
budgets on ``full`` and on top of the LLRD model.

Trained models are cached under ``$TRANSFERKIT_CACHE/bench/forgetting/models`` (keyed by their
configuration and the data digest); a ``full`` model cached by another benchmark with the same data and
configuration is re-used. A fresh run trains 6 models: about 1.5 h on 2 busy cores.

Prints the whole table with the Pareto front, writes a report with the trade-off plot, and prints ONE
JSON line last: ``full_retention``, ``retention_at_1pt`` (highest retention among settings within 1
point of plain ``full``'s test accuracy), ``full_accuracy`` (+ the best setting within 1 point).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from transferkit.assets import cache_dir

logger = logging.getLogger("bench.forgetting")
BENCH_VERSION = 1
BASE = "minilm-l6"


def _data(root: Path, quick: bool) -> Path:
    from transferkit.data.prepare import DataPrepConfig, prepare_dataset
    from transferkit.data.prepared import load_prepared

    out = root / ("data-quick" if quick else "data")
    try:
        load_prepared(out)
        return out
    except Exception:
        pass
    prepare_dataset(DataPrepConfig(dataset="builtin:movie-sentiment", out=out, seed=42,
                                   max_rows=1500 if quick else None))
    return out


def _digest(data: Path) -> dict[str, str]:
    from transferkit.train.data import file_digest

    return {split: file_digest(data / f"{split}.parquet") for split in ("train", "validation")}


def _reusable_full(kwargs: dict[str, Any], digests: dict[str, str]) -> Path | None:
    """A ``full`` model with this data and configuration cached by another benchmark, if any."""
    for summary_path in sorted((cache_dir() / "bench").glob("**/training_summary.json")):
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        config = summary.get("config", {})
        if (summary.get("strategy") == "full" and config.get("model") == BASE
                and summary.get("data", {}).get("sha256") == digests
                and all(config.get(k) == v for k, v in kwargs.items())
                and config.get("llrd", 1.0) == 1.0 and not config.get("l2sp") and not config.get("preserve_source")
                and config.get("seed") == 42 and not summary.get("preserve_source")):
            return summary_path.parent
    return None


def _train(root: Path, data: Path, name: str, kwargs: dict[str, Any], digests: dict[str, str],
           quick: bool) -> tuple[Path, float | None, bool]:
    """Train (or re-use) one setting; return (model_dir, train_seconds, cached)."""
    from transferkit.train import TrainConfig, run_training

    train_kwargs = {"seed": 42, **kwargs}
    if quick:
        train_kwargs.update(max_steps=12, batch_size=16)
    key = hashlib.sha1(json.dumps({"v": BENCH_VERSION, "data": digests, **train_kwargs}, sort_keys=True,
                                  default=str).encode()).hexdigest()[:10]
    slug = name.replace("--", "").replace(" ", "_").replace(".", "p")
    out = root / "models" / f"{slug}-{key}"
    summary = out / "training_summary.json"
    if not summary.is_file() and name == "full" and not quick:
        other = _reusable_full({k: v for k, v in train_kwargs.items() if k != "strategy"}, digests)
        if other is not None:
            logger.info("re-using the full model cached at %s", other)
            return other, json.loads((other / "training_summary.json").read_text()).get("train_seconds"), True
    if summary.is_file():
        logger.info("re-using cached %s (%s)", name, out)
        return out, json.loads(summary.read_text()).get("train_seconds"), True
    logger.info("training %s", name)
    started = time.perf_counter()
    run_training(TrainConfig(data_dir=data, model=BASE, out_dir=out, **train_kwargs))
    return out, time.perf_counter() - started, False


def _measure(model: Path, data: Path, work: Path) -> dict[str, float]:
    from transferkit.evaluate import EvaluateConfig, ForgettingConfig, check_forgetting, evaluate_model

    evaluated = evaluate_model(EvaluateConfig(model_dir=model, data_dir=data, out_dir=work / "eval", progress=False))
    forgetting = check_forgetting(ForgettingConfig(base=BASE, model=model, out_dir=work / "forgetting",
                                                   progress=False))
    return {"accuracy": evaluated.scalars["accuracy"], "macro_f1": evaluated.scalars["macro_f1"],
            "lee_pearson": forgetting.model_score, "retention": forgetting.retention,
            "base_pearson": forgetting.base_score}


def _pareto(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        row["pareto"] = not any(
            o is not row and o["accuracy"] >= row["accuracy"] and o["retention"] >= row["retention"]
            and (o["accuracy"] > row["accuracy"] or o["retention"] > row["retention"])
            for o in rows
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="Report directory (default: cache/bench/forgetting)")
    parser.add_argument("--l2sp", default="0.01,1.0", help="Comma-separated L2-SP strengths to sweep.")
    parser.add_argument("--budgets", default="0.7,0.8,0.9",
                        help="Comma-separated preserve-source retention budgets applied to the full model.")
    parser.add_argument("--combo-budgets", default="0.8",
                        help="Budgets applied on top of the LLRD model (combination of two mitigations).")
    parser.add_argument("--quick", action="store_true", help="Tiny smoke run (1,500 rows, 12 steps).")
    parser.add_argument("--train-only", action="store_true", help="Train and cache the models, then stop.")
    parser.add_argument("--only", default=None,
                        help="Comma-separated trained settings to include (default: all), e.g. 'full'.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    from transferkit.evaluate.charts import pareto as pareto_chart
    from transferkit.io import atomic_output_dir, write_json
    from transferkit.reporting import Report
    from transferkit.train.preserve import preserve_source, wise_ft

    root = cache_dir() / "bench" / ("forgetting-quick" if args.quick else "forgetting")
    root.mkdir(parents=True, exist_ok=True)
    data = _data(root, args.quick)
    digests = _digest(data)
    work = root / "work"
    shutil.rmtree(work, ignore_errors=True)

    trained: list[tuple[str, dict[str, Any]]] = [
        ("full", {"strategy": "full"}),
        ("full --llrd 0.8", {"strategy": "full", "llrd": 0.8}),
        *[(f"full --l2sp {a}", {"strategy": "full", "l2sp": float(a)}) for a in args.l2sp.split(",") if a],
        ("feature_extraction", {"strategy": "feature_extraction"}),
        ("feature_extraction --unfreeze-top-layers 2", {"strategy": "feature_extraction", "unfreeze_top_layers": 2}),
    ]
    if args.only:
        wanted = {w.strip() for w in args.only.split(",")} | {"full"}
        trained = [t for t in trained if t[0] in wanted]
    rows: list[dict[str, Any]] = []
    models: dict[str, Path] = {}
    for name, kwargs in trained:
        model, seconds, cached = _train(root, data, name, kwargs, digests, args.quick)
        models[name] = model
        if args.train_only:
            continue
        measured = _measure(model, data, work / f"m{len(rows)}")
        rows.append({"setting": name, **measured, "train_s": seconds, "cached": cached, "kind": "trained"})
        logger.info("%s: %s", name, {k: round(v, 4) for k, v in measured.items()})

    if args.train_only:
        return
    # Post-hoc settings on trained models: cheap, no retraining.
    for alpha in (0.7, 0.5):
        name = f"full + WiSE-FT alpha={alpha} (head kept)"
        out = wise_ft(models["full"], base=BASE, alpha=alpha, out_dir=work / f"wise{alpha}")
        rows.append({"setting": name, **_measure(out, data, work / f"m{len(rows)}"), "train_s": None,
                     "cached": False, "kind": "post-hoc"})
    summaries: dict[str, Any] = {}
    plans = [("full", args.budgets), ("full --llrd 0.8", args.combo_budgets)]
    for source_name, budgets in [(n, b) for n, b in plans if n in models]:
        for budget in (float(b) for b in budgets.split(",") if b):
            name = f"{source_name} --preserve-source --min-retention {budget}"
            target = work / f"preserve-{len(rows)}"
            shutil.copytree(models[source_name], target)
            started = time.perf_counter()
            summary = preserve_source(target, base=BASE, data_dir=data, source=None, min_retention=budget,
                                      progress=False)
            seconds = time.perf_counter() - started
            summaries[name] = summary
            rows.append({"setting": name, **_measure(target, data, work / f"m{len(rows)}"), "train_s": seconds,
                         "cached": False, "kind": "post-hoc", "alpha": summary.get("alpha"),
                         "head": summary.get("head")})
            rows[-1]["split_layer"] = summary.get("split_layer")
            logger.info("%s: layers >= %s at alpha %s, head %s", name, summary.get("split_layer"),
                        summary.get("alpha"), summary.get("head"))

    full = next(r for r in rows if r["setting"] == "full")
    for row in rows:
        row["delta_accuracy"] = row["accuracy"] - full["accuracy"]
    _pareto(rows)
    within = [r for r in rows if r["accuracy"] >= full["accuracy"] - 0.01]
    best = max(within, key=lambda r: r["retention"])

    headers = ["setting", "test acc", "d acc", "Lee r", "retention", "pareto", "time s"]
    table = [[r["setting"], f"{r['accuracy']:.4f}", f"{100 * r['delta_accuracy']:+.1f} pt", f"{r['lee_pearson']:.3f}",
              f"{r['retention']:.3f}", "*" if r["pareto"] else "",
              "cached" if r["cached"] else (f"{r['train_s']:.0f}" if r["train_s"] else "-")] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *table, strict=True)]
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for line in table:
        print(" | ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)))
    print(f"base Lee Pearson {full['base_pearson']:.3f}; * = on the Pareto front (accuracy vs retention)")

    report = Report("Accuracy / forgetting trade-off (minilm-l6, movie sentiment, Lee retention)")
    report.paragraph(__doc__.split("\n\n")[1].replace("\n", " "))
    report.figure("pareto.png", pareto_chart(rows, "retention", "accuracy", "setting",
                                             "Test accuracy vs Lee retention"), "Trade-off plot")
    report.table(headers, table)
    for name, summary in summaries.items():
        report.heading(f"{name}: candidates (validation split)")
        report.paragraph(f"chosen: layers >= {summary.get('split_layer')} at alpha {summary.get('alpha')}, "
                         f"head {summary.get('head')}; profile {summary.get('profile')}")
        report.table(["split layer", "alpha", "retention", "val loss (kept)", "val acc (kept)", "best head",
                      "val loss", "val acc"],
                     [[c["split_layer"], c["alpha"], c["retention"], c["val_loss_kept_head"],
                       c["val_accuracy_kept_head"], c["best_head"], c["val_loss"], c["val_accuracy"]]
                      for c in summary.get("candidates", [])])
    out_dir = args.out or root / "report"
    with atomic_output_dir(out_dir) as tmp:
        report.write(tmp, stem="report")
        write_json(tmp / "results.json", {"rows": rows, "preserve_source": summaries})
    print(f"report: {out_dir / 'report.html'}")
    from transferkit.hardware import benchmark_host

    print(json.dumps({
        **benchmark_host(),
        "full_retention": round(full["retention"], 4), "retention_at_1pt": round(best["retention"], 4),
        "full_accuracy": round(full["accuracy"], 4), "best_within_1pt": best["setting"],
        "best_within_1pt_accuracy": round(best["accuracy"], 4), "base_lee_pearson": round(full["base_pearson"], 4),
    }))


if __name__ == "__main__":
    main()
