"""Int4 recipes of the ONNX Runtime GenAI builder: ROUGE-L drop vs fp32 (with a paired bootstrap CI) and speed.

The model is benchmarks/summarization.py's SmolLM2-135M + LoRA summarizer (``--model-dir``, default
``$TRANSFERKIT_CACHE/bench/summarization/lora``), the prompts its own aclsum test split (``--data-dir``), greedy,
64 new tokens, 2 threads, one run. ``transferkit export`` builds fp32 and the default int4 (with the generation
settings the export writes); every other recipe is built by the same builder call the export makes and gets the
same generation settings. Per recipe: ROUGE-L against the references, the drop vs fp32 in points with a 95%
paired bootstrap interval over prompts (ROUGE-L of greedy summaries moves by points with one prompt: a drop
without its interval says little), the share of prompts whose 64 tokens are fp32's exactly, decode tokens/s and
its ratio to PyTorch eager ``generate`` (KV cache on; measured before and after the sweep, the mean is used).

``--baseline-model-dir``: a second model of the same base and tokenizer (the plain LoRA summarizer when
``--model-dir`` was trained with ``--quantization-aware int4``), built in fp32 with the same settings; every recipe
also gets its drop vs that model's fp32 (``drop_vs_baseline_pt``, with its interval), so a quantization-aware model
is judged against what the user would otherwise serve, not only against its own fp32 graph.

Goal (issue 16): an int4 recipe within 1 pt of fp32 at >= 6x PyTorch. The LAST stdout line is one JSON object:
``recipes`` (name -> rougeL, drop_pt, drop_ci95, identical_outputs, tokens_per_s, vs_pytorch), ``best``
(the smallest drop among recipes at >= 6x), and the host CPU. ``TK_BENCH_QUICK=1``: 4 prompts, 2 recipes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generation as bench  # benchmarks/generation.py: prompts, PyTorch speed, GenAI runs

from transferkit.export.generative import INT4_RECIPES, build_variant

QUICK = os.environ.get("TK_BENCH_QUICK") == "1"
# name -> the builder's --extra_options: transferkit's --int4-recipe values, then candidates it does not offer.
RECIPES: dict[str, tuple[str, ...]] = {
    **INT4_RECIPES,
    "k-quant-mixed-block16": ("algo_config=k_quant_mixed", "block_size=16"),
    "rtn-block16": ("block_size=16",),
    "k-quant-last-block16": ("algo_config=k_quant_last", "block_size=16"),
    "k-quant": ("algo_config=k_quant",),
    "k-quant-mixed-fp32-activations": ("algo_config=k_quant_mixed", "accuracy_level=1"),
}
SPEED_GOAL = 6.0


def bootstrap_ci(differences: np.ndarray, *, samples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of paired per-prompt differences."""
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(differences), size=(samples, len(differences)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def build_recipe(model_dir: Path, reference_variant: Path, out: Path, options: tuple[str, ...], cache: Path,
                 precision: str = "int4") -> None:
    """Build one variant and give it the reference variant's generation and session settings."""
    build_variant(model_dir, out, precision, "cpu", cache, options)
    reference = json.loads((reference_variant / "genai_config.json").read_text())
    config = json.loads((out / "genai_config.json").read_text())
    config["search"] = reference["search"]
    config["model"]["eos_token_id"] = reference["model"]["eos_token_id"]
    config["model"]["decoder"]["session_options"] = reference["model"]["decoder"]["session_options"]
    (out / "genai_config.json").write_text(json.dumps(config, indent=4) + "\n")


def main() -> int:
    from transferkit.assets import cache_dir

    bench_root = cache_dir() / "bench" / "summarization"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=bench_root / "lora")
    parser.add_argument("--data-dir", type=Path, default=bench_root / "aclsum")
    parser.add_argument("--baseline-model-dir", type=Path, default=None,
                        help="Also compare every recipe with this model's fp32 (e.g. the plain LoRA summarizer).")
    parser.add_argument("--prompts", type=int, default=4 if QUICK else 300, help="First N test prompts.")
    parser.add_argument("--recipes", default=",".join(list(RECIPES)[:2] if QUICK else RECIPES),
                        help=f"Comma-separated, from: {', '.join(RECIPES)}.")
    args = parser.parse_args()
    names = [name.strip() for name in args.recipes.split(",") if name.strip()]
    unknown = [name for name in names if name not in RECIPES]
    if unknown or not args.model_dir.is_dir():
        parser.error(f"unknown recipes {unknown}" if unknown else f"{args.model_dir}: no such model directory "
                     "(run benchmarks/summarization.py first)")
    import torch
    from transformers import AutoTokenizer

    from transferkit.errors import ExportError
    from transferkit.evaluate.generation import summarize_outputs
    from transferkit.export import export_model
    from transferkit.export.config import ExportConfig
    from transferkit.hardware import benchmark_host

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(bench.THREADS)
    bench.PROMPTS = args.prompts
    prompts, _, references = bench.prompt_ids(args.model_dir, args.data_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    torch_speeds = [bench.pytorch_speed(args.model_dir, prompts)]
    with tempfile.TemporaryDirectory(prefix="tk-bench-int4-") as tmp:
        root = Path(tmp)
        export_model(ExportConfig(model_dir=args.model_dir, data_dir=args.data_dir, out_dir=root / "onnx",
                                  threads=bench.THREADS, max_eval_samples=2, max_drop=100.0))
        fp32_speed, fp32_outputs = bench.genai_run(root / "onnx" / "fp32", prompts)
        decode = lambda outputs: [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outputs]  # noqa: E731
        fp32_scalars, fp32_rouge = summarize_outputs(decode(fp32_outputs), references)
        print(f"fp32: ROUGE-L {fp32_scalars['rougeL']:.4f}, {fp32_speed:.1f} tokens/s", flush=True)
        baseline_rouge, baseline_scalars = None, None
        if args.baseline_model_dir is not None:
            build_recipe(args.baseline_model_dir, root / "onnx" / "fp32", root / "baseline-fp32", (),
                         root / "builder-cache", precision="fp32")
            _, baseline_outputs = bench.genai_run(root / "baseline-fp32", prompts)
            baseline_scalars, baseline_rouge = summarize_outputs(decode(baseline_outputs), references)
            shutil.rmtree(root / "baseline-fp32")
            print(f"baseline fp32: ROUGE-L {baseline_scalars['rougeL']:.4f}", flush=True)
        results: dict[str, dict] = {}
        failed: dict[str, str] = {}
        for name in names:
            variant = root / f"int4-{name}"
            started = time.perf_counter()
            try:
                build_recipe(args.model_dir, root / "onnx" / "int4", variant, RECIPES[name], root / "builder-cache")
            except ExportError as exc:
                failed[name] = str(exc).rsplit(": ", 1)[-1]
                print(f"{name}: the builder failed: {failed[name]}", flush=True)
                continue
            build_s = time.perf_counter() - started
            speed, outputs = bench.genai_run(variant, prompts)
            scalars, rouge = summarize_outputs(decode(outputs), references)
            low, high = bootstrap_ci(100 * (fp32_rouge - rouge))
            results[name] = {"rougeL": scalars["rougeL"],
                             "drop_pt": round(100 * (fp32_scalars["rougeL"] - scalars["rougeL"]), 3),
                             "drop_ci95": [round(low, 2), round(high, 2)],
                             "identical_outputs": round(float(np.mean([a == b for a, b in
                                                                       zip(outputs, fp32_outputs, strict=True)])), 3),
                             "tokens_per_s": round(speed, 2), "build_s": round(build_s, 1),
                             "extra_options": list(RECIPES[name])}
            if baseline_rouge is not None:
                low, high = bootstrap_ci(100 * (baseline_rouge - rouge))
                results[name].update(
                    drop_vs_baseline_pt=round(100 * (baseline_scalars["rougeL"] - scalars["rougeL"]), 3),
                    drop_vs_baseline_ci95=[round(low, 2), round(high, 2)])
            print(f"{name}: {results[name]}", flush=True)
    torch_speeds.append(bench.pytorch_speed(args.model_dir, prompts))
    torch_speed = float(np.mean(torch_speeds))
    for result in results.values():
        result["vs_pytorch"] = round(result["tokens_per_s"] / torch_speed, 2)
    against_baseline = args.baseline_model_dir is not None
    print("| recipe | ROUGE-L | drop (pt) | 95% CI | identical to fp32 | tokens/s | vs PyTorch |"
          + (" drop vs baseline fp32 (pt) | 95% CI |" if against_baseline else ""))
    print("|---|---|---|---|---|---|---|" + ("---|---|" if against_baseline else ""))
    for name, r in results.items():
        baseline_cells = (f" {r['drop_vs_baseline_pt']:.2f} | {r['drop_vs_baseline_ci95'][0]:.2f} .. "
                          f"{r['drop_vs_baseline_ci95'][1]:.2f} |" if against_baseline else "")
        print(f"| {name} | {r['rougeL']:.4f} | {r['drop_pt']:.2f} | {r['drop_ci95'][0]:.2f} .. {r['drop_ci95'][1]:.2f} "
              f"| {r['identical_outputs']:.0%} | {r['tokens_per_s']:.1f} | {r['vs_pytorch']:.2f}x |{baseline_cells}")
    fast = {name: r for name, r in results.items() if r["vs_pytorch"] >= SPEED_GOAL}
    best = min(fast, key=lambda name: fast[name]["drop_pt"]) if fast else None
    summary = {"recipes": results, "failed_builds": failed, "best": best, "prompts": len(prompts),
               "rougeL_fp32": fp32_scalars["rougeL"], "fp32_tokens_per_s": round(fp32_speed, 2),
               "model_dir": str(args.model_dir), "baseline_model_dir": str(args.baseline_model_dir or ""),
               "rougeL_baseline_fp32": baseline_scalars["rougeL"] if baseline_scalars else None,
               "pytorch_tokens_per_s": [round(s, 2) for s in torch_speeds], "load_average": os.getloadavg()}
    print(json.dumps({**summary, **benchmark_host()}, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
