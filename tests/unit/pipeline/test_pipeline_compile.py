import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from transferkit.cli.main import app
from transferkit.cli.pipeline import COMPONENTS
from transferkit.errors import ConfigError
from transferkit.images import RUNTIME_IMAGE
from transferkit.placement import load_placement

runner = CliRunner()


def _docs(path):
    return list(yaml.safe_load_all(path.read_text()))


def test_checked_in_pipeline_and_components_match_a_fresh_compile(repo_root, tmp_path):
    """Golden files: `make compile` output must be committed."""
    out = tmp_path / "pipeline.yaml"
    result = runner.invoke(app, ["pipeline", "compile", "--output", str(out), "--no-components"])
    assert result.exit_code == 0, result.output
    golden = repo_root / "pipelines/transfer_learning/pipeline.yaml"
    assert out.read_text() == golden.read_text(), "pipeline.yaml is stale: run `make compile` and commit"
    from kfp import compiler

    sys.path.insert(0, str(repo_root))
    import importlib

    for name in COMPONENTS:
        fresh = tmp_path / f"{name}.yaml"
        compiler.Compiler().compile(getattr(importlib.import_module(f"components.{name}.component"), name), str(fresh))
        checked_in = repo_root / "components" / name / "component.yaml"
        assert fresh.read_text() == checked_in.read_text(), f"{checked_in} is stale: run `make compile`"


def test_components_use_the_runtime_image_without_installing_kfp(repo_root):
    spec = _docs(repo_root / "pipelines/transfer_learning/pipeline.yaml")[0]
    executors = spec["deploymentSpec"]["executors"]
    expected = {"exec-data-prep", "exec-fine-tune", "exec-evaluate", "exec-forgetting-check", "exec-onnx-quantize",
                "exec-deploy-triton"}
    assert expected <= set(executors)
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == RUNTIME_IMAGE, name
        assert "pip install" not in " ".join(container["command"]), f"{name} installs packages at run time"


def test_deploy_is_gated_by_one_condition_and_never_cached(repo_root):
    spec = _docs(repo_root / "pipelines/transfer_learning/pipeline.yaml")[0]
    text = yaml.safe_dump(spec)
    assert "all-gates-passed" in text
    dag = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    condition = next(t for t in dag.values() if t["taskInfo"]["name"] == "all-gates-passed")
    assert "deploy-gate-Output" in condition["triggerPolicy"]["condition"]
    assert "deploy-gate" in condition["dependentTasks"]
    deploy = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]["deploy-triton"]
    assert deploy["cachingOptions"] == {}  # compiled form of caching disabled
    assert dag["data-prep"]["cachingOptions"] == {"enableCache": True}
    assert spec["root"]["dag"]["tasks"]["exit-handler-1"]


def test_gpu_placement_puts_accelerator_node_selector_and_tolerations_on_fine_tune(repo_root, tmp_path):
    config = repo_root / "pipelines/transfer_learning/placement/gpu-cluster.yaml"
    out = tmp_path / "gpu.yaml"
    result = runner.invoke(app, ["pipeline", "compile", "--config", str(config), "--output", str(out)])
    assert result.exit_code == 0, result.output
    pipeline_spec, platform = _docs(out)
    resources = pipeline_spec["deploymentSpec"]["executors"]["exec-fine-tune"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "1"
    assert resources["resourceMemoryLimit"] == "48Gi"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    fine_tune = k8s["exec-fine-tune"]
    assert fine_tune["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert fine_tune["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    assert fine_tune["pvcMount"][0]["constant"] == "transferkit-checkpoints"
    shm = {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "16Gi", "volumeName": "dshm"}
    assert shm in fine_tune["emptyDirMounts"]
    assert fine_tune["imagePullSecret"][0]["secretName"] == "transferkit-registry"
    assert fine_tune["activeDeadlineSeconds"] == "86400"
    deploy = k8s["exec-deploy-triton"]
    secrets = {s["secretName"] for s in deploy["secretAsEnv"]}
    assert secrets == {"transferkit-s3", "transferkit-triton-api", "transferkit-git"}
    assert "nodeSelector" not in k8s["exec-evaluate"]
    assert pipeline_spec["root"]["dag"]["tasks"]["exit-handler-1"]  # placement keeps the DAG intact


def test_cpu_placement_has_no_accelerator(repo_root, tmp_path):
    out = tmp_path / "cpu.yaml"
    config = repo_root / "pipelines/transfer_learning/placement/cpu-cluster.yaml"
    result = runner.invoke(app, ["pipeline", "compile", "--config", str(config), "--output", str(out)])
    assert result.exit_code == 0, result.output
    spec = _docs(out)[0]
    for executor in spec["deploymentSpec"]["executors"].values():
        assert "accelerator" not in executor["container"].get("resources", {})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("steps: {fine_tuning: {}}", "steps.fine_tuning is not a pipeline step"),
        ("steps: {fine_tune: {gpus: 2}}", "unknown field(s) gpus"),
        ("steps: {fine_tune: {memory_limit: lots}}", "steps.fine_tune.memory_limit: 'lots' is not a Kubernetes"),
        ("steps: {fine_tune: {accelerator: {count: 1}}}", "accelerator: expected {type"),
        ("steps: {fine_tune: {tolerations: [{key: a, operator: Maybe}]}}", "toleration.operator"),
        ("secrets: [{name: s3}]", "secrets[0] needs name, env"),
        ("placement: {}", "unknown top-level field(s) placement"),
        ("steps: [", "not valid YAML"),
    ],
)
def test_bad_placement_configs_are_rejected_with_the_field(tmp_path, content, message):
    path = tmp_path / "placement.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_placement(path)
    assert message in str(info.value)
    result = runner.invoke(app, ["pipeline", "compile", "--config", str(path), "--output", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2
    assert not (tmp_path / "x.yaml").exists()


def test_unknown_pipeline_parameter_is_rejected(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("epoch: 3\n")
    result = runner.invoke(app, ["pipeline", "run", "--local", "--params", str(params), "--work-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown pipeline parameter(s) epoch" in result.output


def test_compiled_component_yaml_loads_back(repo_root):
    from kfp import components

    component = components.load_component_from_file(str(repo_root / "components/evaluate/component.yaml"))
    assert component.name == "evaluate"
    assert {"model", "dataset"} <= set(component.component_spec.inputs)


def test_runtime_library_never_imports_kfp(repo_root):
    code = ("import sys, transferkit.data.prepare, transferkit.train, transferkit.evaluate, transferkit.export, "
            "transferkit.serve.deploy, transferkit.cli.main; print('kfp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_optional_tune_step_feeds_fine_tune_and_is_off_by_default(repo_root):
    spec = _docs(repo_root / "pipelines/transfer_learning/pipeline.yaml")[0]
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["tune_space"]["defaultValue"] == "" and inputs["tune_trials"]["defaultValue"] == 12
    dag = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    search = dag["tune-search"]
    assert search["inputs"]["parameters"]["space"] == {"componentInputParameter": "pipelinechannel--tune_space"}
    assert search["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"]["producerTask"] == "data-prep"
    sweep = spec["components"][dag["for-loop-2"]["componentRef"]["name"]]["dag"]["tasks"]
    # The best options reach the sweep as the best_config artifact (kfp.local resolves a string output of a task
    # outside a ParallelFor to the loop item).
    assert sweep["fine-tune"]["inputs"]["artifacts"]["tuned_config"] == {
        "componentInputArtifact": "pipelinechannel--tune-search-best_config"}
    assert dag["for-loop-2"]["inputs"]["artifacts"]["pipelinechannel--tune-search-best_config"] == {
        "taskOutputArtifact": {"outputArtifactKey": "best_config", "producerTask": "tune-search"}}
