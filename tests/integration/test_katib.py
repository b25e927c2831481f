"""``transferkit tune --katib``: a Katib Experiment through the Kubeflow SDK, against kmock on loopback.

kmock stands in for the Kubernetes API server (it stores objects but sets no creation timestamps or namespaces
and ignores label selectors; the test fills those in as the API server would). The test then plays Katib and
Kubeflow Trainer: it runs the trial command the SDK built (the real ``bash -c`` script around ``torchrun``, with
the trial's parameter values substituted as Katib does) on a real slice of movie reviews, reads the metric lines
the way Katib's StdOut collector does, records them as the trial's observation and completes the Experiment.
The client side (submit, follow, best trial, ``best_config.json``) is the real SDK and the real CLI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.helpers import write_movie_slice
from tests.integration.test_trainjob import KubeApi
from transferkit import images
from transferkit.cli.main import app
from transferkit.train import TrainConfig
from transferkit.tune import load_best_config
from transferkit.tune.katib import transferkit_trial

pytest.importorskip("kmock")
pytestmark = pytest.mark.integration

NAMESPACE = "transferkit"
EXPERIMENTS = f"/apis/kubeflow.org/v1beta1/namespaces/{NAMESPACE}/experiments"
TRIALS = f"/apis/kubeflow.org/v1beta1/namespaces/{NAMESPACE}/trials"
TRAINJOBS = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NAMESPACE}/trainjobs"
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"
NOW = "2026-12-03T12:00:00Z"
# Katib's StdOut metrics collector: `name=value` lines.
KATIB_METRIC_LINE = re.compile(r"^([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)$")

SPACE = """
objective: accuracy
fixed:
  strategy: feature_extraction
  max_length: 32
  batch_size: 16
  eval_steps: 2
params:
  head_learning_rate: {low: 1.0e-4, high: 1.0e-1, log: true}
  epochs: {low: 1, high: 3, step: 1}
  weight_decay: {choices: [0.0, 0.01]}
"""

# The torch-distributed ClusterTrainingRuntime as Kubeflow Trainer installs it (the fields the SDK reads).
RUNTIME = {
    "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime",
    "metadata": {"name": "torch-distributed", "labels": {"trainer.kubeflow.org/framework": "torch"}},
    "spec": {
        "mlPolicy": {"numNodes": 1, "torch": {"numProcPerNode": "auto"}},
        "template": {"spec": {"replicatedJobs": [{
            "name": "node",
            "template": {
                "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                "spec": {"template": {"spec": {"containers": [
                    {"name": "node", "image": "pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime",
                     "command": ["/bin/bash", "-c", "echo 'Torch Distributed Runtime'"]}]}}},
            },
        }]}},
    },
}


@pytest.fixture()
def api(tmp_path, monkeypatch):
    from kubernetes import client

    previous = client.Configuration._default
    with KubeApi() as server:
        kubeconfig = {
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": server.url}}],
            "users": [{"name": "tester", "user": {}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester", "namespace": NAMESPACE}}],
        }
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        monkeypatch.setenv("KUBECONFIG", str(path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        status, _ = server.request("POST", "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes", RUNTIME)
        assert status in (200, 201)
        yield server
    client.Configuration.set_default(previous)


def _run_trial(command: list[str], values: dict[str, str], cwd: Path) -> list[str]:
    """Run the trial's container command as Katib + Trainer would: parameters substituted, torchrun on PATH."""
    script = command[-1]
    for name, value in values.items():
        script = script.replace("${trialParameters." + name + "}", value)
    assert "${trialParameters." not in script
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": f"{root / 'src'}:{root}", "TRANSFERKIT_LOG_LEVEL": "WARNING"}
    done = subprocess.run([*command[:-1], script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [line for line in done.stdout.splitlines() if KATIB_METRIC_LINE.match(line)]


def _play_katib(api: KubeApi, experiment: dict, values: dict[str, str], metrics: dict[str, float]) -> None:
    """Record one finished trial and complete the Experiment, as Katib's controllers would."""
    name = experiment["metadata"]["name"]
    trial = f"{name}-trial-1"
    api.request("PATCH", f"{EXPERIMENTS}/{name}", {"metadata": {"namespace": NAMESPACE, "creationTimestamp": NOW}})
    spec = experiment["spec"]["trialTemplate"]["trialSpec"]
    api.request("POST", TRAINJOBS, {**spec, "metadata": {"name": trial, "namespace": NAMESPACE,
                                                         "creationTimestamp": NOW}})
    api.request("POST", PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": f"{trial}-node-0-0-abcde", "namespace": NAMESPACE, "creationTimestamp": NOW, "labels": {
            "jobset.sigs.k8s.io/jobset-name": trial, "jobset.sigs.k8s.io/replicatedjob-name": "node",
            "batch.kubernetes.io/job-completion-index": "0"}},
        "spec": {"containers": [{"name": "node", "image": spec["spec"]["trainer"]["image"]}]},
        "status": {"phase": "Succeeded"}})
    observation = {"metrics": [{"name": k, "latest": str(v), "min": str(v), "max": str(v)} for k, v in metrics.items()]}
    assignments = [{"name": k, "value": v} for k, v in values.items()]
    api.request("POST", TRIALS, {"apiVersion": "kubeflow.org/v1beta1", "kind": "Trial", "metadata": {
        "name": trial, "namespace": NAMESPACE, "labels": {"katib.kubeflow.org/experiment": name}},
        "spec": {"parameterAssignments": assignments}, "status": {"observation": observation}})
    api.request("PATCH", f"{EXPERIMENTS}/{name}/status", {"status": {
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "ExperimentMaxTrialsReached",
                        "message": "Experiment has succeeded because max trial count has reached"}],
        "currentOptimalTrial": {"bestTrialName": trial, "parameterAssignments": assignments,
                                "observation": observation}}})


def test_katib_experiment_runs_real_trial_commands_and_writes_the_best_config(api, tmp_path):
    data = write_movie_slice(tmp_path / "data", train=48, validation=16, test=8)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    runner = CliRunner()
    base = ["tune", "--katib", "--data", str(data), "--model", "minilm-l6", "--space", str(space),
            "--out", str(tmp_path / "best"), "--trial-out", str(tmp_path / "trials"), "--trials", "6",
            "--parallel", "2", "--gpus-per-node", "1", "--seed", "3"]
    result = runner.invoke(app, [*base, "--no-wait", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["namespace"] == NAMESPACE and record["parameters"] == ["head_learning_rate", "epochs",
                                                                          "weight_decay"]

    # What reached the API server: a Katib Experiment whose trials are TrainJobs of the torch runtime.
    _, experiment = api.request("GET", f"{EXPERIMENTS}/{record['name']}")
    spec = experiment["spec"]
    assert spec["objective"]["objectiveMetricName"] == "accuracy" and spec["objective"]["type"] == "maximize"
    assert (spec["maxTrialCount"], spec["parallelTrialCount"]) == (6, 2)
    assert spec["algorithm"]["algorithmName"] == "random"
    params = {p["name"]: p for p in spec["parameters"]}
    assert params["head_learning_rate"]["parameterType"] == "double"
    assert params["head_learning_rate"]["feasibleSpace"]["distribution"] == "logUniform"
    # epochs is a float option: a stepped double range (the SDK's Search has no stepped ranges).
    assert params["epochs"]["parameterType"] == "double"
    assert params["epochs"]["feasibleSpace"] == {"min": "1.0", "max": "3.0", "step": "1.0", "distribution": "uniform"}
    assert params["weight_decay"]["feasibleSpace"]["list"] == ["0.0", "0.01"]
    trial_spec = spec["trialTemplate"]["trialSpec"]
    assert trial_spec["kind"] == "TrainJob" and trial_spec["spec"]["runtimeRef"]["name"] == "torch-distributed"
    trainer = trial_spec["spec"]["trainer"]
    assert trainer["image"] == images.RUNTIME_CUDA_IMAGE and trainer["numNodes"] == 1
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 1
    command = trainer["command"]
    assert command[:2] == ["bash", "-c"] and 'torchrun "' in command[-1]
    assert "${trialParameters.head_learning_rate}" in command[-1]

    # Katib runs a trial: the exact command, parameters substituted; the metric lines are what Katib collects.
    values = {"head_learning_rate": "0.01", "epochs": "2", "weight_decay": "0.01"}
    lines = _run_trial(command, values, tmp_path)
    metrics = {line.split("=")[0]: float(line.split("=")[1]) for line in lines}
    assert {"accuracy", "f1_macro", "loss"} <= set(metrics) and 0 <= metrics["accuracy"] <= 1
    (trial_dir,) = (tmp_path / "trials").iterdir()
    summary = json.loads((trial_dir / "model" / "training_summary.json").read_text())
    assert summary["config"]["head_learning_rate"] == 0.01 and summary["config"]["epochs"] == 2
    assert summary["config"]["weight_decay"] == 0.01 and summary["validation"]["accuracy"] == metrics["accuracy"]

    # Katib finishes; `--wait` on a new submission is the same client path, so follow this Experiment.
    _play_katib(api, experiment, values, metrics)
    from transferkit.tune.katib import KatibConfig, wait_for_experiment

    config = KatibConfig(data=str(data), model="minilm-l6", space=space, out_root=str(tmp_path / "trials"),
                         namespace=NAMESPACE)
    best = wait_for_experiment(config, record["name"], tmp_path / "best", timeout_s=10, poll_s=0.1)
    assert best["value"] == metrics["accuracy"] and best["study"] == f"katib:{record['name']}"
    options = load_best_config(tmp_path / "best" / "best_config.json")
    rebuilt = TrainConfig(data_dir=data, out_dir=tmp_path / "final", **options)
    assert (rebuilt.head_learning_rate, rebuilt.epochs, rebuilt.weight_decay) == (0.01, 2, 0.01)
    assert best["train_args"][:4] == ["--model", "minilm-l6", "--strategy", "feature_extraction"]


def test_bad_katib_input_fails_with_one_line_before_anything_is_created(api, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    runner = CliRunner()
    base = ["tune", "--katib", "--data", "/mnt/data", "--model", "minilm-l6", "--space", str(space),
            "--out", str(tmp_path / "best")]
    result = runner.invoke(app, base)
    assert result.exit_code == 2
    assert result.output.strip() == "error: --trial-out: required with --katib (the output root the trial pods " \
                                    "write to)"
    result = runner.invoke(app, [*base, "--trial-out", "/mnt/out/$HOME"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: out_root: '/mnt/out/$HOME' contains '$', which the trial command "
                                     "cannot carry")
    result = runner.invoke(app, [*base, "--trial-out", "/mnt/out", "--trials", "2", "--parallel", "3"])
    assert result.exit_code == 2 and result.output.strip() == "error: parallel: 3 exceeds trials (2)"
    space.write_text(SPACE.replace("weight_decay: {choices: [0.0, 0.01]}", "preserve_source: {choices: [true]}"))
    result = runner.invoke(app, [*base, "--trial-out", "/mnt/out"])
    assert result.exit_code == 2
    assert "params.preserve_source:" in result.output and len(result.output.strip().splitlines()) == 1
    assert api.request("GET", EXPERIMENTS)[0] == 404  # nothing was created


def test_the_trial_function_survives_the_sdk_heredoc():
    import inspect

    source = inspect.getsource(transferkit_trial)
    assert not any(c in source for c in ("$", "`", "\\")), "the SDK embeds this source in an unquoted heredoc"


def test_a_missing_runtime_is_one_line_naming_it(api, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    result = CliRunner().invoke(app, ["tune", "--katib", "--data", "/mnt/data", "--model", "minilm-l6", "--space",
                                      str(space), "--out", str(tmp_path / "best"), "--trial-out", "/mnt/out",
                                      "--runtime", "torch-missing"])
    assert result.exit_code != 0
    (line,) = [x for x in result.output.strip().splitlines() if x.startswith("error:")]
    assert line.startswith("error: Katib Experiment not created:") and "torch-missing" in line, result.output
    assert api.request("GET", EXPERIMENTS)[0] == 404
