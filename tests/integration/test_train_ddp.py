"""`--nproc-per-node 2` relaunches the same entry point under torchrun (gloo on CPU)."""

import json
import subprocess
import sys

import pytest
from transformers import AutoModelForSequenceClassification

from tests.helpers import write_movie_slice
from transferkit.io import read_json

pytestmark = pytest.mark.integration


def test_two_cpu_processes_train_one_model(tmp_path):
    data = write_movie_slice(tmp_path / "data", train=32, validation=16, test=16)
    out = tmp_path / "model"
    command = [sys.executable, "-m", "transferkit.cli.main", "train", "--data", str(data), "--model", "minilm-l6",
               "--strategy", "full", "--out", str(out), "--max-length", "32", "--batch-size", "8",
               "--max-steps", "2", "--nproc-per-node", "2", "--json"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = read_json(out / "training_summary.json")
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == summary
    assert summary["world_size"] == 2
    assert summary["resolved"]["effective_batch_size"] == 16  # 8 per process x 2 processes
    assert summary["global_step"] == 2 and summary["device"] == "cpu"
    # Rank 0 alone published the model, atomically.
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert not list(tmp_path.glob(".model.tmp-*"))
    assert "torch.distributed.run" in completed.stderr or "Launching 2 processes" in completed.stderr
