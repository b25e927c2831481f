"""TrainJob objects built by the trainjob launcher: config validation and the object's shape (no server)."""

from __future__ import annotations

import re

import pytest

from tests.unit.k8s.validation import ManifestError, validate_manifest
from transferkit import images
from transferkit.errors import ConfigError
from transferkit.train.trainjob import (
    CHECKPOINT_MOUNT,
    OUTPUT_MOUNT,
    TrainJobConfig,
    build_trainjob,
    default_name,
    describe_status,
)

ARGS = ["--data", "/mnt/checkpoints/data", "--model", "minilm-l6", "--strategy", "full", "--out", "/mnt/outputs/run-1"]


def config(**overrides):
    values = {"train_args": ARGS, "nodes": 2, "gpus_per_node": 4, "namespace": "transferkit",
              "checkpoint_pvc": "transferkit-checkpoints", "output_pvc": "transferkit-outputs"}
    values.update(overrides)
    return TrainJobConfig(**values)


def test_gpu_job_shape_validates_against_the_trainjob_schema():
    job = build_trainjob(config(node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                                tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                                cpu_per_node="16", memory_per_node="128Gi", env={"NCCL_DEBUG": "WARN"},
                                image_pull_secrets=["regcred"], service_account="transferkit-pipeline-runner"),
                         "transferkit-train-1")
    validate_manifest(job)
    spec = job["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                  "kind": "ClusterTrainingRuntime"}
    trainer = spec["trainer"]
    assert trainer["image"] == images.RUNTIME_CUDA_IMAGE
    assert trainer["command"] == ["torchrun", "-m", "transferkit.cli.main", "train", *ARGS]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4
    assert trainer["resourcesPerNode"] == {"limits": {"nvidia.com/gpu": "4", "memory": "128Gi"},
                                           "requests": {"cpu": "16", "memory": "128Gi"}}
    env = {e["name"]: e["value"] for e in trainer["env"]}
    assert env["NCCL_DEBUG"] == "WARN" and env["TRANSFERKIT_TRAINJOB"] == "transferkit-train-1"
    assert env["TRANSFERKIT_CHECKPOINT_ROOT"] == CHECKPOINT_MOUNT and env["TRANSFERKIT_OUTPUT_ROOT"] == OUTPUT_MOUNT
    (override,) = spec["podTemplateOverrides"]
    assert override["targetJobs"] == [{"name": "node"}]
    pod = override["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"checkpoints": "transferkit-checkpoints", "outputs": "transferkit-outputs"}
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    (container,) = pod["containers"]
    assert container["name"] == "node"
    assert {m["mountPath"]: m["name"] for m in container["volumeMounts"]} == {
        "/dev/shm": "dshm", CHECKPOINT_MOUNT: "checkpoints", OUTPUT_MOUNT: "outputs"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "transferkit-pipeline-runner"


def test_cpu_job_uses_the_cpu_image_and_one_process_per_node():
    job = build_trainjob(config(gpus_per_node=0, output_pvc="transferkit-checkpoints"), "cpu-job")
    validate_manifest(job)
    trainer = job["spec"]["trainer"]
    assert trainer["image"] == images.RUNTIME_IMAGE
    assert trainer["numProcPerNode"] == 1
    assert "resourcesPerNode" not in trainer
    pod = job["spec"]["podTemplateOverrides"][0]["spec"]
    # One claim for both roles: one volume, mounted at both paths.
    assert [v["name"] for v in pod["volumes"]] == ["dshm", "checkpoints"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts[CHECKPOINT_MOUNT] == mounts[OUTPUT_MOUNT] == "checkpoints"


def test_schema_rejects_what_the_trainer_api_rejects():
    job = build_trainjob(config(), "ok-name")
    job["metadata"]["name"] = "9-starts-with-a-digit"
    with pytest.raises(ManifestError, match="metadata.name"):
        validate_manifest(job)
    job = build_trainjob(config(), "ok-name")
    job["spec"]["trainer"]["numNode"] = 2
    with pytest.raises(ManifestError, match="numNode"):
        validate_manifest(job)


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
