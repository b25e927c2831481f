"""The trainjob launcher without a server: config validation, names, status reading, unshared paths.

The TrainJob object itself is built by the Kubeflow SDK on its way to the API server: its shape is tested in
tests/integration/test_trainjob.py against the API stand-in."""

from __future__ import annotations

import re

import pytest

from transferkit.errors import ConfigError
from transferkit.train.trainjob import (
    CHECKPOINT_MOUNT,
    TrainJobConfig,
    default_name,
    describe_status,
)

ARGS = ["--data", "/mnt/checkpoints/data", "--model", "minilm-l6", "--strategy", "full", "--out", "/mnt/outputs/run-1"]


def config(**overrides):
    values = {"train_args": ARGS, "nodes": 2, "gpus_per_node": 4, "namespace": "transferkit",
              "checkpoint_pvc": "transferkit-checkpoints", "output_pvc": "transferkit-outputs"}
    values.update(overrides)
    return TrainJobConfig(**values)


def test_default_name_is_a_valid_unique_trainjob_name():
    names = {default_name() for _ in range(20)}
    assert len(names) > 1
    for name in names:
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"nodes": 0}, "nodes"),
        ({"nodes": True}, "nodes"),
        ({"gpus_per_node": -1}, "gpus_per_node"),
        ({"namespace": "Team_A"}, "namespace"),
        ({"checkpoint_pvc": "Bad/Name"}, "checkpoint_pvc"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"poll_s": -1}, "poll_s"),
        ({"runtime_kind": "Runtime"}, "runtime_kind"),
        ({"name": "x" * 64}, "name"),
        ({"name": "Upper"}, "name"),
        ({"memory_per_node": "lots"}, "memory_per_node"),
        ({"shm_size": "1 GB"}, "shm_size"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"tolerations": [{"operator": "Maybe"}]}, "tolerations[0]"),
        ({"train_args": ["--out", "relative/dir"]}, "train_args --out"),
        ({"train_args": "--epochs 1"}, "train_args"),
        ({"image": "has space:1"}, "image"),
    ],
)
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as excinfo:
        config(**overrides)
    message = str(excinfo.value)
    assert message.startswith(field) and "\n" not in message


@pytest.mark.parametrize(
    ("status", "state"),
    [
        (None, "Pending"),
        ({"jobsStatus": [{"name": "node", "active": 0, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0}]},
         "Pending"),
        ({"jobsStatus": [{"name": "node", "active": 2, "ready": 2, "succeeded": 0, "failed": 0, "suspended": 0}]},
         "Running"),
        ({"conditions": [{"type": "Suspended", "status": "True", "reason": "Suspended", "message": "queued"}]},
         "Suspended"),
        ({"conditions": [{"type": "Suspended", "status": "False", "reason": "Resumed", "message": ""}],
          "jobsStatus": [{"name": "node", "active": 1, "ready": 0}]}, "Running"),
        ({"conditions": [{"type": "Complete", "status": "True", "reason": "JobSetCompleted", "message": "done"}]},
         "Complete"),
        ({"conditions": [{"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "node-0 failed"}]},
         "Failed"),
    ],
)
def test_describe_status(status, state):
    obj = {"status": status} if status is not None else {}
    assert describe_status(obj)[0] == state


def test_output_paths_off_the_shared_claims_are_reported():
    assert config().unshared_paths() == []
    lost = config(train_args=["--out", "/home/me/runs/x", "--checkpoint-dir", "/mnt/checkpoints/ckpt"],
                  output_pvc=None)
    assert lost.unshared_paths() == [("--out", "/home/me/runs/x")]
    assert lost.mounts == [CHECKPOINT_MOUNT]
    assert config(train_args=["--out=s3://bucket/run"], checkpoint_pvc=None, output_pvc=None).unshared_paths() == []
