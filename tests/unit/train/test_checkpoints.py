import json
import logging

import pytest

from transferkit.errors import CheckpointError
from transferkit.train.checkpoints import (
    MANIFEST,
    check_checkpoint,
    check_run_identity,
    clear_checkpoints,
    latest_complete_checkpoint,
    write_manifest,
    write_run_identity,
)


def _checkpoint(root, step, *, seal=True):
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (path / "optimizer.pt").write_bytes(b"o" * 5000)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if seal:
        write_manifest(path)
    return path


def test_complete_checkpoint_passes_and_damage_is_detected(tmp_path):
    path = _checkpoint(tmp_path, 4)
    assert check_checkpoint(path) is None
    original = (path / "model.safetensors").read_bytes()
    data = bytearray(original)
    data[100] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    assert check_checkpoint(path) == "model.safetensors is corrupted (checksum mismatch)"
    (path / "model.safetensors").write_bytes(original)
    assert check_checkpoint(path) is None
    (path / "optimizer.pt").write_bytes(b"o" * 10)
    assert "optimizer.pt has 10 bytes" in check_checkpoint(path)
    (path / "optimizer.pt").unlink()
    assert "optimizer.pt is missing" in check_checkpoint(path)
    assert "no manifest" in check_checkpoint(_checkpoint(tmp_path, 8, seal=False))


def test_latest_complete_checkpoint_skips_partial_and_corrupted_with_a_warning(tmp_path, caplog):
    _checkpoint(tmp_path, 2)
    good = _checkpoint(tmp_path, 4)
    partial = _checkpoint(tmp_path, 6, seal=False)
    corrupted = _checkpoint(tmp_path, 8)
    (corrupted / "optimizer.pt").write_bytes(b"x" * 5000)
    with caplog.at_level(logging.WARNING, logger="transferkit.train.checkpoints"):
        assert latest_complete_checkpoint(tmp_path) == good
    text = caplog.text
    assert "checkpoint-8 (step 8): optimizer.pt is corrupted" in text
    assert "checkpoint-6 (step 6): no manifest" in text
    # Broken checkpoints are moved out of the Trainer's way (its rotation globs checkpoint-*).
    assert not partial.exists() and not corrupted.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".incomplete-")) == [
        ".incomplete-checkpoint-6-0", ".incomplete-checkpoint-8-0"]
    assert latest_complete_checkpoint(tmp_path / "missing") is None


def test_manifest_is_written_last_and_lists_every_file(tmp_path):
    path = _checkpoint(tmp_path, 3)
    files = json.loads((path / MANIFEST).read_text())["files"]
    assert sorted(files) == ["model.safetensors", "optimizer.pt", "trainer_state.json"]
    assert files["optimizer.pt"]["size"] == 5000


def test_run_identity_protects_against_mixing_runs(tmp_path):
    identity = {"model": "m", "seed": 1, "learning_rate": 5e-5}
    check_run_identity(tmp_path, identity)  # nothing recorded yet
    write_run_identity(tmp_path, identity)
    check_run_identity(tmp_path, dict(identity))
    with pytest.raises(CheckpointError, match=r"different run \(seed: 1 != 2\).*--no-resume"):
        check_run_identity(tmp_path, {**identity, "seed": 2})


def test_clear_checkpoints(tmp_path):
    _checkpoint(tmp_path, 1)
    _checkpoint(tmp_path, 2, seal=False)
    write_run_identity(tmp_path, {"a": 1})
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "other").mkdir()
    assert clear_checkpoints(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]
