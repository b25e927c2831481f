"""Training overhead: `transferkit train --strategy full` vs a plain Hugging Face Trainer script.

Both run in fresh processes on the same prepared movie-sentiment sample with identical settings: MiniLM
with a new 2-label head (``--pooling cls`` so both models have the same 6 layers), batch 32, lr 5e-5,
6% warmup, linear decay, weight decay 0.01, max_length 64 with dynamic padding and length-grouped
batches, 1 epoch, evaluation + checkpoint at the end of the epoch and the best model restored. transferkit
adds its parameter groups, loss, per-step logging of loss/LR/grad norm to TensorBoard, checkpoint
manifests (SHA-256 of every file) and reports. Data: seeded samples of the prepared split (512 train,
256 validation rows) so that training, not evaluation, dominates ``train()``. Runs alternate, with the
order swapped every round to cancel drift on a shared machine; ``ratio`` is the median over rounds of
transferkit / plain ``train_samples_per_second`` (the Trainer's own measure over the whole ``train()``
call). Goal: ``ratio`` >= 0.95. Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from feature_extraction import subset
from transfer_quality import prepared_movie_data

PLAIN_SCRIPT = r'''
import json, sys
import pyarrow.parquet as pq
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainingArguments)
import numpy as np
from transferkit.models.catalog import resolve_model

data, out, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
path = resolve_model("minilm-l6").path
tokenizer = AutoTokenizer.from_pretrained(path)
labels = json.load(open(f"{data}/labels.json"))
model = AutoModelForSequenceClassification.from_pretrained(
    path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})

def load(split):
    table = pq.read_table(f"{data}/{split}.parquet")
    enc = tokenizer(table.column("text").to_pylist(), truncation=True, max_length=64)
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "token_type_ids": enc["token_type_ids"][i], "labels": label}
            for i, label in enumerate(table.column("label").to_pylist())]

def metrics(pred):
    return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

args = TrainingArguments(
    output_dir=out, per_device_train_batch_size=32, per_device_eval_batch_size=64, num_train_epochs=1,
    learning_rate=5e-5, warmup_steps=0.06, weight_decay=0.01, lr_scheduler_type="linear", eval_strategy="epoch",
    save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="accuracy", report_to="none",
    seed=seed, use_cpu=True, train_sampling_strategy="group_by_length", disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=load("train"), eval_dataset=load("validation"),
                  data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                  compute_metrics=metrics)
output = trainer.train()
trainer.save_model(out + "/final")
print(json.dumps({"train_samples_per_second": output.metrics["train_samples_per_second"]}))
'''


def run_plain(data: Path, out: Path, seed: int) -> float:
    completed = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT, str(data), str(out), str(seed)],
                               capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"plain Trainer script failed: {completed.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return float(json.loads(completed.stdout.strip().splitlines()[-1])["train_samples_per_second"])


def run_transferkit(data: Path, out: Path, seed: int) -> float:
    command = [sys.executable, "-m", "transferkit.cli.main", "train", "--data", str(data), "--model", "minilm-l6",
               "--strategy", "full", "--out", str(out), "--pooling", "cls", "--head-learning-rate", "5e-5",
               "--batch-size", "32", "--eval-batch-size", "64", "--epochs", "1", "--max-length", "64",
               "--learning-rate", "5e-5", "--warmup-ratio", "0.06", "--weight-decay", "0.01",
               "--scheduler", "linear", "--seed", str(seed), "--json"]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"transferkit train failed: {completed.stderr[-2000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return float(result["train_samples_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-rows", type=int, default=512)
    parser.add_argument("--validation-rows", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="train-overhead-"))
    plain, ours = [], []
    try:
        data = subset(prepared_movie_data(args.seed), work / "data", args.train_rows, args.seed,
                      validation_rows=args.validation_rows)
        for round_ in range(args.rounds):
            if round_ % 2:
                ours.append(run_transferkit(data, work / f"tk-{round_}", args.seed))
                plain.append(run_plain(data, work / f"plain-{round_}", args.seed))
            else:
                plain.append(run_plain(data, work / f"plain-{round_}", args.seed))
                ours.append(run_transferkit(data, work / f"tk-{round_}", args.seed))
            print(f"round {round_ + 1}: plain {plain[-1]:.2f} samples/s, transferkit {ours[-1]:.2f} samples/s "
                  f"(ratio {ours[-1] / plain[-1]:.3f})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = statistics.median(o / p for o, p in zip(ours, plain, strict=True))
    print(f"\n{'run':<12} {'samples/s (median)':>18} {'all rounds':>30}")
    print(f"{'plain HF':<12} {statistics.median(plain):>18.2f} {', '.join(f'{v:.2f}' for v in plain):>30}")
    print(f"{'transferkit':<12} {statistics.median(ours):>18.2f} {', '.join(f'{v:.2f}' for v in ours):>30}")
    from transferkit.hardware import benchmark_host

    print(json.dumps({**benchmark_host(), "ratio": round(ratio, 3), "ratio_of_medians": round(statistics.median(ours)
                                                                           / statistics.median(plain), 3),
                      "plain_samples_per_s": round(statistics.median(plain), 2),
                      "transferkit_samples_per_s": round(statistics.median(ours), 2), "train_rows": args.train_rows,
                      "rounds": args.rounds}))


if __name__ == "__main__":
    main()
