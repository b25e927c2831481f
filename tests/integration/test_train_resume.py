"""A run killed with SIGKILL mid-training and started again ends exactly like an uninterrupted run."""

import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from tests.helpers import write_movie_slice
from transferkit.io import read_json
from transferkit.train import config_to_cli_args

pytestmark = pytest.mark.integration
MAX_STEPS = 4


def _cli(*args):
    return [sys.executable, "-m", "transferkit.cli.main", "train", *args]


def _config(data, out, **extra):
    """The run under test (the reference and the restart run in-process, the killed run as the CLI)."""
    from transferkit.train import TrainConfig

    return TrainConfig(data_dir=data, model="minilm-l6", strategy="full", out_dir=out, max_length=32, batch_size=16,
                       max_steps=MAX_STEPS, eval_steps=2, save_steps=2, augment="token_mask", augment_prob=0.15,
                       seed=3, **extra)


def test_sigkill_then_restart_ends_with_the_same_metrics_as_an_uninterrupted_run(tmp_path, caplog):
    from transferkit.train import run_training

    data = write_movie_slice(tmp_path / "data", train=64, validation=32, test=32)
    reference = run_training(_config(data, tmp_path / "reference")).to_dict()

    out, checkpoints = tmp_path / "resumed", tmp_path / "pvc"
    args = config_to_cli_args(_config(data, out, checkpoint_dir=checkpoints))
    process = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sealed = checkpoints / "checkpoint-2" / "transferkit_manifest.json"
    deadline = time.monotonic() + 600
    while not sealed.exists():
        assert process.poll() is None, "training ended before the first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not out.exists()  # nothing was published by the killed run
    steps = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*"))
    assert steps and steps[-1] < MAX_STEPS
    # A partial checkpoint newer than the complete ones must be skipped, with a warning.
    partial = checkpoints / f"checkpoint-{MAX_STEPS - 1}"
    shutil.copytree(checkpoints / "checkpoint-2", partial)
    (partial / "optimizer.pt").write_bytes(b"truncated")

    # Started again (same settings, same checkpoint directory).
    with caplog.at_level(logging.WARNING, logger="transferkit.train.checkpoints"):
        resumed = run_training(_config(data, out, checkpoint_dir=checkpoints)).to_dict()
    assert f"checkpoint-{MAX_STEPS - 1} (step {MAX_STEPS - 1}): optimizer.pt has 9 bytes" in caplog.text
    assert resumed["resumed_from"] == str(checkpoints / f"checkpoint-{steps[-1]}")
    assert resumed["validation_metrics"] == reference["validation_metrics"]
    assert resumed["best_step"] == reference["best_step"] and resumed["global_step"] == MAX_STEPS

    # Every logged value after the resume point is identical (loss, grad norm, validation metrics)...
    start = int(resumed["resumed_from"].rsplit("-", 1)[1])
    ref_history = read_json(tmp_path / "reference" / "log_history.json")
    new_history = read_json(out / "log_history.json")

    def after(history):
        keep = ("loss", "grad_norm", "learning_rate", "eval_loss", "eval_accuracy", "eval_f1_macro")
        return [{k: e[k] for k in keep if k in e} | {"step": e["step"]} for e in history
                if e["step"] > start and any(k in e for k in keep)]

    assert after(new_history) == after(ref_history) != []
    # ...and so are the published weights.
    ref_weights = load_file(tmp_path / "reference" / "model.safetensors")
    new_weights = load_file(out / "model.safetensors")
    assert ref_weights.keys() == new_weights.keys()
    for name, tensor in ref_weights.items():
        assert (tensor == new_weights[name]).all(), name
