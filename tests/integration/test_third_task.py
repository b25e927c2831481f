"""A task is one module: a toy third task (tests/toy_task.py) runs prepare -> train -> evaluate -> export -> Triton.

Nothing in ``src/`` knows the task: it is registered here through the registry alone, on real data
(scikit-learn's 8x8 digits as 64 numeric features).
"""

import json

import pytest

from tests import toy_task
from transferkit.data.prepare import DataPrepConfig, prepare_dataset
from transferkit.data.prepared import load_prepared
from transferkit.errors import ConfigError, ModelError
from transferkit.evaluate.evaluation import EvaluateConfig, evaluate_model
from transferkit.export import ExportConfig, export_model
from transferkit.serve.deploy import DeployConfig, deploy_model
from transferkit.serve.local import LocalTriton
from transferkit.serve.repository import RepositoryOptions
from transferkit.tasks import get_task, register_task, unregister_task
from transferkit.train import TrainConfig, run_training

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def toy():
    task = register_task(toy_task.TASK)
    yield task
    unregister_task(task.name)


@pytest.fixture(scope="module")
def digits_csv(tmp_path_factory):
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = tmp_path_factory.mktemp("toy") / "digits.csv"
    header = ",".join([*(f"p{i}" for i in range(64)), "label"])
    lines = [",".join([*(f"{v:g}" for v in row / 16.0), f"digit-{label}"])
             for row, label in zip(digits.data, digits.target, strict=True)]
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("toy") / "base"
    config = {"num_features": 64, "hidden_sizes": [32, 32], "num_labels": 2}
    toy_task.save_mlp(toy_task.build_mlp(config), directory, 64, [32, 32], ["a", "b"])
    return directory


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    repository = tmp_path_factory.mktemp("toy-triton") / "repository"
    repository.mkdir()
    with LocalTriton(repository, exit_timeout=3) as server:
        yield server


def test_a_task_registered_from_outside_runs_every_step(toy, digits_csv, base_model, triton, tmp_path):
    prepared = prepare_dataset(DataPrepConfig(dataset=str(digits_csv), out=tmp_path / "data", task=toy.name))
    assert get_task(prepared.out_dir) is toy
    assert sum(prepared.rows.values()) == 1797 and prepared.num_labels == 10

    result = run_training(TrainConfig(data_dir=prepared.out_dir, model=str(base_model), strategy="full",
                                      out_dir=tmp_path / "model", epochs=8, batch_size=32, learning_rate=3e-3,
                                      head_learning_rate=3e-3, llrd=0.8, l2sp=1e-4))
    assert get_task(result.out_dir) is toy
    assert result.best_metric_value > 0.8, result.best_metric_value
    summary = json.loads((result.out_dir / "training_summary.json").read_text(encoding="utf-8"))
    assert summary["strategy"] == "full"

    evaluation = evaluate_model(EvaluateConfig(model_dir=result.out_dir, data_dir=prepared.out_dir,
                                               out_dir=tmp_path / "eval", progress=False))
    assert evaluation.scalars["accuracy"] > 0.8
    assert (tmp_path / "eval" / "report.html").is_file()

    exported = export_model(ExportConfig(model_dir=result.out_dir, data_dir=prepared.out_dir,
                                         out_dir=tmp_path / "onnx", latency_runs=2, throughput_runs=1))
    assert exported.parity_max_abs_diff < 1e-4
    assert exported.variants["fp32"].accuracy == pytest.approx(evaluation.scalars["accuracy"], abs=1e-9)
    spec = json.loads((tmp_path / "onnx" / "io_spec.json").read_text(encoding="utf-8"))
    assert spec["task"] == toy.name and spec["inputs"][0]["name"] == "features"
    assert set(exported.variants) == {"fp32", "int8"}
    exported_labels = spec["labels"]

    # Served as a plain-tensor ensemble (no front model) by the real local Triton, answering like ORT here.
    import onnxruntime as ort
    import tritonclient.http as httpclient

    served = deploy_model(DeployConfig(onnx_dir=tmp_path / "onnx", name="toy", repository=str(triton.repository),
                                       triton_url=triton.http_url, api_key_env=None,
                                       options=RepositoryOptions(instance_kind="cpu", variant="fp32")))
    assert served.models == ["toy_onnx", "toy_postprocess", "toy"]
    rows = toy_task.read_features(load_prepared(prepared.out_dir), "test")[0][:5]
    request = httpclient.InferInput("features", list(rows.shape), "FP32")
    request.set_data_from_numpy(rows)
    client = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"))
    answer = client.infer("toy", [request], outputs=[httpclient.InferRequestedOutput("label")])
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = [exported_labels[i] for i in session.run(None, {"features": rows})[0].argmax(axis=1)]
    assert [v.decode() for v in answer.as_numpy("label").reshape(-1)] == expected


def test_the_task_checks_its_own_options(toy, digits_csv, base_model, tmp_path):
    prepared = prepare_dataset(DataPrepConfig(dataset=str(digits_csv), out=tmp_path / "data", task=toy.name))
    with pytest.raises(ConfigError, match="max_length: does not apply to task toy-tabular-classification"):
        run_training(TrainConfig(data_dir=prepared.out_dir, model=str(base_model), strategy="full",
                                 out_dir=tmp_path / "model", max_length=32))
    with pytest.raises(ModelError, match="no off-the-shelf head"):
        run_training(TrainConfig(data_dir=prepared.out_dir, model=str(base_model), strategy="off_the_shelf",
                                 out_dir=tmp_path / "model"))
    assert not (tmp_path / "model").exists()
