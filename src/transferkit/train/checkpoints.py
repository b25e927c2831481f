"""Checkpoint integrity and resume: only a complete, uncorrupted checkpoint is ever resumed from.

The Trainer writes ``checkpoint-<step>/`` file by file (weights, optimizer, scheduler, RNG states,
``trainer_state.json`` last) and a process killed in the middle leaves a partial directory. After each
save, :class:`~transferkit.train.callbacks.ManifestCallback` writes ``transferkit_manifest.json``
(size and SHA-256 of every file) into the checkpoint, atomically and last;
:func:`latest_complete_checkpoint` resumes from the newest checkpoint whose manifest exists and matches,
and sets partial or corrupted ones aside (renamed to ``.incomplete-checkpoint-<step>-<n>``, ignored by
the Trainer's rotation) with a warning.

A ``run.json`` in the checkpoint directory records the settings that define the run; resuming with
different settings (other data, model, strategy or hyperparameters) is refused instead of silently
mixing two runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from transferkit.errors import CheckpointError, TrainingError
from transferkit.io import read_json, write_json

logger = logging.getLogger(__name__)

MANIFEST = "transferkit_manifest.json"
RUN_FILE = "run.json"
TENSORBOARD_DIR = "tensorboard"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(checkpoint: Path) -> Path:
    """Record size and SHA-256 of every file in ``checkpoint`` (written atomically, after all files)."""
    files = {}
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[str(path.relative_to(checkpoint))] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return write_json(checkpoint / MANIFEST, {"format_version": 1, "files": files})


def check_checkpoint(checkpoint: Path) -> str | None:
    """Return None when ``checkpoint`` is complete and intact, else the reason it is not."""
    manifest_path = checkpoint / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (the save did not finish)"
    try:
        manifest = read_json(manifest_path)
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest ({exc})"
    if "trainer_state.json" not in files:
        return "trainer_state.json missing from manifest"
    for name, meta in files.items():  # cheap checks first: presence and size
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != meta.get("size"):
            return f"{name} has {path.stat().st_size} bytes, expected {meta.get('size')}"
    for name, meta in files.items():
        if _sha256(checkpoint / name) != meta.get("sha256"):
            return f"{name} is corrupted (checksum mismatch)"
    return None


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-<step>`` directory, newest first."""
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found, reverse=True)


def _set_aside(checkpoint: Path) -> Path:
    for n in range(1000):
        target = checkpoint.with_name(f".incomplete-{checkpoint.name}-{n}")
        if not target.exists():
            os.replace(checkpoint, target)
            return target
    raise CheckpointError(f"{checkpoint}: cannot set the incomplete checkpoint aside")


def latest_complete_checkpoint(directory: Path, *, set_aside: bool = True) -> Path | None:
    """Return the newest complete checkpoint in ``directory``; warn about (and move away) broken ones."""
    for step, path in list_checkpoints(directory):
        reason = check_checkpoint(path)
        if reason is None:
            return path
        logger.warning("Skipping checkpoint %s (step %d): %s", path, step, reason)
        if set_aside:
            moved = _set_aside(path)
            logger.warning("Moved the incomplete checkpoint to %s", moved)
    return None


def check_run_identity(directory: Path, identity: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint directory that belongs to a run with other settings.

    Raises:
        CheckpointError: ``run.json`` exists and a field differs.

    """
    path = directory / RUN_FILE
    if not path.is_file():
        return
    try:
        previous = read_json(path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable run description ({exc})") from exc
    for key in sorted(set(previous) | set(identity)):
        if previous.get(key) != identity.get(key):
            raise CheckpointError(
                f"{directory}: holds checkpoints of a different run ({key}: {previous.get(key)!r} != "
                f"{identity.get(key)!r}); use another --checkpoint-dir or --no-resume"
            )


def write_run_identity(directory: Path, identity: dict[str, Any]) -> None:
    """Record the run's defining settings in the checkpoint directory."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / RUN_FILE, identity)


def clear_checkpoints(directory: Path) -> int:
    """Remove every checkpoint (complete or not) and the old run's logs; return how many checkpoints went."""
    removed = 0
    if not directory.is_dir():
        return 0
    for child in directory.iterdir():
        if _CHECKPOINT.match(child.name) or child.name.startswith(".incomplete-checkpoint-"):
            shutil.rmtree(child, ignore_errors=True)
            removed += 1
    clear_logs(directory)
    (directory / RUN_FILE).unlink(missing_ok=True)
    return removed


def clear_logs(directory: Path) -> None:
    """Remove TensorBoard events of a run that left no checkpoint (a fresh start must not mix curves)."""
    shutil.rmtree(directory / TENSORBOARD_DIR, ignore_errors=True)


def manifest_summary(checkpoint: Path) -> dict[str, Any]:
    """Step and file list of a sealed checkpoint (for logs and the training summary)."""
    manifest = json.loads((checkpoint / MANIFEST).read_text(encoding="utf-8"))
    return {"path": str(checkpoint), "files": sorted(manifest["files"])}


def prepare_checkpoint_dir(
    checkpoint_dir: Path, identity: dict[str, Any], *, resume: bool, rank: int, world_size: int
) -> Path | None:
    """On rank 0: check the run identity, pick the checkpoint to resume from (or clear); share with all ranks."""
    import torch.distributed as dist

    decision: dict[str, Any] = {"path": None, "error": None}
    if rank == 0:
        try:
            if resume:
                check_run_identity(checkpoint_dir, identity)
                found = latest_complete_checkpoint(checkpoint_dir)
                decision["path"] = str(found) if found else None
                if found is None:
                    clear_logs(checkpoint_dir)
            else:
                removed = clear_checkpoints(checkpoint_dir)
                if removed:
                    logger.warning("--no-resume: removed %d old checkpoint(s) from %s", removed, checkpoint_dir)
            write_run_identity(checkpoint_dir, identity)
        except Exception as exc:
            decision["error"] = str(exc)
            if world_size <= 1:
                raise
            holder = [decision]
            dist.broadcast_object_list(holder, src=0)
            raise
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        holder = [decision]
        dist.broadcast_object_list(holder, src=0)
        decision = holder[0]
        if decision["error"]:
            raise TrainingError(f"rank 0 could not prepare the checkpoint directory: {decision['error']}")
    return Path(decision["path"]) if decision["path"] else None
