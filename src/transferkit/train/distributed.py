"""Launching the fine-tune step on several processes.

``transferkit train --nproc-per-node N`` re-executes the same command under
``torchrun --standalone --nproc_per_node N`` (one process per GPU on a GPU node, gloo on CPU). The
children see ``WORLD_SIZE``/``RANK`` and run :func:`~transferkit.train.run.run_training` as ranks; the
Trainer sets up DDP. A Kubeflow Trainer TrainJob runs the same entry point (``python -m
transferkit.cli.main train ...``) under its own torchrun, so nothing here is specific to one machine.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from transferkit.errors import TrainingError

logger = logging.getLogger(__name__)


def in_distributed_child() -> bool:
    """True inside a process started by torchrun (or a TrainJob)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def torchrun_command(train_args: list[str], nproc_per_node: int) -> list[str]:
    """The command that runs ``transferkit train <train_args>`` under torchrun on this node."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
        "-m", "transferkit.cli.main", "train", *train_args,
    ]


def launch_torchrun(train_args: list[str], nproc_per_node: int) -> None:
    """Run the training under torchrun and wait; raise if any rank failed.

    Raises:
        TrainingError: torchrun exited non-zero.

    """
    command = torchrun_command(train_args, nproc_per_node)
    env = dict(os.environ)
    # Each rank would otherwise use all cores and they would fight over them.
    cores = os.cpu_count() or 1
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc_per_node)))
    logger.info("Launching %d processes: %s", nproc_per_node, " ".join(command))
    completed = subprocess.run(command, env=env, check=False)
    if completed.returncode != 0:
        raise TrainingError(
            f"torchrun with {nproc_per_node} processes failed with exit code {completed.returncode} "
            "(see the rank logs above)"
        )
