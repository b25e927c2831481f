"""The real local Triton: deploy, infer with raw strings, hot swap under load, rollback, bad input.

One server (restricted model-control API on) and one MiniLM export for the whole module.
"""

import json
import os
import shutil
import socket
import time
import urllib.request

import numpy as np
import pytest

from tests.unit.serve.exported import pair_export, shared_export
from transferkit.errors import AuthError, DeploymentError, ServerUnavailableError, ServingError
from transferkit.serve.control import TritonControl
from transferkit.serve.deploy import DeployConfig, deploy_model
from transferkit.serve.loadgen import BackgroundLoad, LoadConfig, run_load
from transferkit.serve.local import SHM_DIR, LocalTriton
from transferkit.serve.repository import RepositoryOptions, build_model_repository
from transferkit.serve.smoke import reference_logits

pytestmark = pytest.mark.integration

KEY_ENV = "TK_TEST_TRITON_KEY"
KEY = "test-model-control-key-123"
NAME = "sentiment"


@pytest.fixture(scope="module")
def export_dir():
    return shared_export()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton") / "repository"
    repo.mkdir()
    with LocalTriton(repo, restricted_api_key=KEY, exit_timeout=3) as triton:
        yield triton
    assert not triton.running()


@pytest.fixture(scope="module")
def key_env():
    os.environ[KEY_ENV] = KEY
    yield KEY_ENV
    os.environ.pop(KEY_ENV, None)


def _config(export_dir, server, key_env, **kwargs):
    options = RepositoryOptions(instance_kind="cpu", max_queue_delay_us=1000)
    return DeployConfig(onnx_dir=export_dir, name=NAME, repository=str(server.repository),
                        triton_url=server.http_url, api_key_env=key_env, options=options, keep_versions=2,
                        **kwargs)


def _versions(server, model=NAME):
    return sorted(int(p.name) for p in (server.repository / model).iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def first_deploy(export_dir, server, key_env):
    return deploy_model(_config(export_dir, server, key_env))


def test_deploy_then_raw_sentence_over_plain_http(first_deploy, server, export_dir):
    assert first_deploy.version == 1 and first_deploy.previous_version is None
    assert first_deploy.smoke_test["passed"] is True
    assert first_deploy.endpoint == f"{server.http_url}/v2/models/{NAME}/infer"
    # What a user does with curl: JSON over HTTP with a raw sentence.
    sentences = ["An absolute triumph of a film.", "Boring."]
    body = json.dumps({"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES",
                                   "data": sentences}]}).encode()
    request = urllib.request.Request(first_deploy.endpoint, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.loads(response.read())
    outputs = {o["name"]: o for o in payload["outputs"]}
    assert outputs["label"]["data"][0] in ("negative", "positive")
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(2, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    from transferkit.serve.repository import load_export

    expected = reference_logits(load_export(export_dir), sentences)
    np.testing.assert_allclose(np.array(outputs["logits"]["data"]).reshape(2, 2), expected, atol=1e-3)
    assert outputs["label"]["data"] == [["negative", "positive"][i] for i in expected.argmax(axis=1)]


def test_classification_extension_returns_labels(first_deploy, server):
    # Triton 2.51 ensembles deadlock when no output of the last step is requested, so the label is
    # requested next to the classified logits.
    body = json.dumps({"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["great"]}],
                       "outputs": [{"name": "logits", "parameters": {"classification": 2}},
                                   {"name": "label"}]}).encode()
    request = urllib.request.Request(first_deploy.endpoint, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        outputs = {o["name"]: o["data"] for o in json.loads(response.read())["outputs"]}
    entries = outputs["logits"]
    assert sorted(e.split(":")[-1] for e in entries) == ["negative", "positive"]
    assert entries[0].split(":")[-1] == outputs["label"][0]  # top class first


def test_production_config_is_accepted_by_the_2_51_server(first_deploy, server, tmp_path):
    # The local server lacks the onnxruntime backend, so the production config cannot load, but the
    # server must get past parsing it and fail on the missing backend only.
    source = server.repository / f"{NAME}_onnx"
    target = server.repository / "prodcheck"
    target.mkdir()
    try:
        config = (source / "config.pbtxt").read_text().replace(f'name: "{NAME}_onnx"', 'name: "prodcheck"')
        (target / "config.pbtxt").write_text(config)
        shutil.copytree(source / "1", target / "1")
        with pytest.raises(ServingError) as info:
            server.load("prodcheck")
        message = str(info.value).lower()
        assert "onnxruntime" in message and "parse" not in message
    finally:
        shutil.rmtree(target)


def test_hot_swap_under_load_has_zero_failures(first_deploy, export_dir, server, key_env):
    load = LoadConfig(http_url=server.http_url, model=NAME, concurrency=(16,), requests=100_000, duration_s=90,
                      warmup=16, timeout_s=60)
    with BackgroundLoad(load) as background:
        result = deploy_model(_config(export_dir, server, key_env))
        time.sleep(1.5)  # keep the load going on the new version for a moment
        level = background.stop()
    assert result.version == first_deploy.version + 1
    assert level.errors == 0, level.first_error
    assert level.requests > 50
    assert set(level.versions_seen) == {str(first_deploy.version), str(result.version)}


def test_failed_smoke_test_rolls_back(first_deploy, export_dir, server, key_env):
    serving = max(_versions(server))
    config = _config(export_dir, server, key_env, smoke_texts=["good", "bad"], smoke_expected_labels=["x", "y"])
    with pytest.raises(DeploymentError, match=rf"version {serving + 1} not deployed: smoke test failed.*"
                                              rf"rolled back \(version {serving} still serving\)"):
        deploy_model(config)
    assert max(_versions(server)) == serving
    with TritonControl(server.http_url, api_key=KEY) as control:
        assert control.ready_versions(NAME) == [serving]
        out = control.infer_texts(NAME, ["still works"])
    assert out["label"].shape == (1, 1)
    # Versions only grow: the failed number is never reused.
    record = json.loads((server.repository / NAME / "DEPLOYMENT.json").read_text())
    assert record["high_water_version"] == serving + 1
    assert record["history"][-1]["status"] == "rolled_back"


def test_wrong_key_publishes_nothing(first_deploy, export_dir, server, monkeypatch):
    monkeypatch.setenv("TK_WRONG_KEY", "not-the-key")
    before = _versions(server)
    with pytest.raises(AuthError, match="model-control key was rejected"):
        deploy_model(_config(export_dir, server, "TK_WRONG_KEY"))
    with pytest.raises(AuthError, match="required but none was configured"):
        deploy_model(_config(export_dir, server, "TK_UNSET_KEY_VAR"))
    assert _versions(server) == before


def test_unreachable_triton_fails_after_bounded_retries(export_dir, tmp_path, key_env):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    repo = tmp_path / "repo"
    config = DeployConfig(onnx_dir=export_dir, name=NAME, repository=str(repo), triton_url=f"http://127.0.0.1:{port}",
                          api_key_env=key_env, attempts=3, backoff_s=0.05)
    with pytest.raises(ServerUnavailableError, match=r"unreachable after 3 attempts"):
        deploy_model(config)
    assert not any(repo.rglob("*.pbtxt"))


def test_load_generator_sweep_reports_batching(first_deploy, server):
    result = run_load(LoadConfig(http_url=server.http_url, grpc_url=server.grpc_url, metrics_url=server.metrics_url,
                                 model=NAME, protocols=("http", "grpc"), concurrency=(1, 8), requests=48,
                                 duration_s=60))
    assert result.total_errors == 0
    assert [(lv.protocol, lv.concurrency) for lv in result.levels] == [("http", 1), ("http", 8), ("grpc", 1),
                                                                        ("grpc", 8)]
    for level in result.levels:
        assert level.requests == 48 and level.throughput_rps > 0
        assert level.p50_ms <= level.p95_ms <= level.p99_ms
        assert level.server_avg_batch_size is not None and level.server_avg_batch_size >= 1.0
    assert result.level("http", 1).server_avg_batch_size == pytest.approx(1.0)
    assert max(lv.server_avg_batch_size for lv in result.levels if lv.concurrency == 8) > 1.0
    for level in result.levels:  # Triton's own statistics of the level: the fast path is one model
        assert set(level.server_ms) == {NAME}
        assert 0 < level.server_ms[NAME]["requests"] <= 48 and level.server_ms[NAME]["compute_infer_ms"] > 0


def _model_config(server, model):
    with urllib.request.urlopen(f"{server.http_url}/v2/models/{model}/config", timeout=30) as response:
        return json.loads(response.read())


def test_local_fast_path_answers_like_the_production_ensemble(first_deploy, server, export_dir, tmp_path):
    # The deployed entry model is served locally by one python model (configs/local.pbtxt). The same tree
    # without that file is served by the production ensemble config (over the local graph model), with
    # the fast path's files lying in its version folder: both must give the same answers.
    built = tmp_path / "repo"
    bundle = build_model_repository(export_dir, "viaensemble", built, options=RepositoryOptions(instance_kind="cpu"))
    shutil.rmtree(built / "viaensemble" / "configs")
    try:
        for model in bundle.models:
            shutil.copytree(built / model, server.repository / model)
            server.load(model)
        assert _model_config(server, NAME)["backend"] == "python"
        assert _model_config(server, "viaensemble")["platform"] == "ensemble"
        texts = ["An absolute triumph of a film.", "Boring.", "not bad", "I walked out after twenty minutes of "
                 "this noisy, joyless and endlessly repetitive mess, and I do not regret it."]
        with TritonControl(server.http_url) as control:
            fast, ensemble = control.infer_texts(NAME, texts), control.infer_texts("viaensemble", texts)
        assert sorted(fast) == sorted(ensemble) == ["label", "logits", "probabilities"]
        np.testing.assert_allclose(fast["logits"], ensemble["logits"], atol=1e-6)
        np.testing.assert_allclose(fast["probabilities"], ensemble["probabilities"], atol=1e-6)
        assert fast["label"].tolist() == ensemble["label"].tolist()
    finally:
        for model in reversed(bundle.models):
            server.unload(model)
            shutil.rmtree(server.repository / model, ignore_errors=True)


def test_fast_path_without_the_graph_on_disk_calls_the_graph_model(export_dir, tmp_path):
    # Triton downloads a cloud repository model by model, so the fast path cannot read its sibling's graph
    # there and runs it in NAME_onnx through BLS instead. Two repository folders reproduce that layout.
    built = tmp_path / "built"
    bundle = build_model_repository(export_dir, "split", built, options=RepositoryOptions(instance_kind="cpu"))
    entry, steps = tmp_path / "entry", tmp_path / "steps"
    for folder in (entry, steps):
        folder.mkdir()
    for model in bundle.models:
        (built / model).rename((entry if model == "split" else steps) / model)
    texts = ["An absolute triumph of a film.", "Boring.", "not bad"]
    with LocalTriton(entry, models=bundle.models, exit_timeout=2, extra_args=[f"--model-repository={steps}"]) as triton:
        with TritonControl(triton.http_url) as control:
            served = control.infer_texts("split", texts)
        with urllib.request.urlopen(f"{triton.http_url}/v2/models/split_onnx/stats", timeout=30) as response:
            graph_stats = json.loads(response.read())["model_stats"][0]["inference_stats"]
    assert graph_stats["success"]["count"] >= 1  # the graph ran in the graph model
    from transferkit.serve.repository import load_export

    np.testing.assert_allclose(served["logits"], reference_logits(load_export(export_dir), texts), atol=1e-3)


def test_server_leaves_no_stub_or_shm_behind(export_dir, tmp_path):
    repo = tmp_path / "repo"
    build_model_repository(export_dir, "m", repo, options=RepositoryOptions(instance_kind="cpu"))
    with LocalTriton(repo, models=["m_postprocess"], exit_timeout=2) as triton:
        triton.load("m_tokenizer")
        triton.unload("m_tokenizer")  # an unloaded model's stub lingers until the server exits
        stubs = triton.stub_pids()
        regions = triton.shm_regions()
        assert stubs and regions
        assert any((SHM_DIR / r).exists() for r in regions)
    assert [pid for pid in stubs if _alive(pid)] == []
    assert [r for r in regions if (SHM_DIR / r).exists()] == []


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sentence_pair_deployment(server, key_env, tmp_path):
    export = pair_export(tmp_path / "pairs")
    config = DeployConfig(onnx_dir=export, name="pairs", repository=str(server.repository), triton_url=server.http_url,
                          api_key_env=key_env, options=RepositoryOptions(instance_kind="cpu"))
    result = deploy_model(config)  # the smoke test sends pairs and compares with in-process pairs
    assert result.smoke_test["passed"]
    from transferkit.serve.repository import load_export

    with TritonControl(server.http_url) as control:
        served = control.infer_texts("pairs", ["A man is eating.", "A dog runs."],
                                     pairs=["Someone eats food.", "A cat sleeps."])
    expected = reference_logits(load_export(export), ["A man is eating.", "A dog runs."],
                                pairs=["Someone eats food.", "A cat sleeps."])
    np.testing.assert_allclose(served["logits"], expected, atol=1e-3)
    single = reference_logits(load_export(export), ["A man is eating.", "A dog runs."])
    assert not np.allclose(expected, single, atol=1e-4)  # the second sentence really reached the graph


def test_version_that_fails_to_load_in_triton_rolls_back(first_deploy, export_dir, server, key_env, tmp_path,
                                                         monkeypatch):
    # Fault injection: the new version's graph model crashes at load time inside Triton.
    from transferkit.serve import repository

    broken = tmp_path / "triton_models"
    shutil.copytree(repository._MODELS_PKG, broken)
    (broken / "onnx_model.py").write_text("raise RuntimeError('simulated load failure')\n")
    monkeypatch.setattr(repository, "_MODELS_PKG", broken)
    serving = max(_versions(server))
    with pytest.raises(DeploymentError, match=rf"load '{NAME}_onnx' failed.*simulated load failure.*"
                                              rf"rolled back \(version {serving} still serving\)"):
        deploy_model(_config(export_dir, server, key_env))
    assert max(_versions(server)) == serving
    assert max(_versions(server, f"{NAME}_tokenizer")) == serving
    with TritonControl(server.http_url, api_key=KEY) as control:
        assert control.ready_versions(NAME) == [serving]
        assert control.ready_versions(f"{NAME}_tokenizer") == [serving]
        assert control.infer_texts(NAME, ["fine"])["label"].shape == (1, 1)


@pytest.fixture(scope="module")
def real_export(tmp_path_factory):
    """The output of the real export step: dynamic int8 (portable recipe) recommended, agreement sample."""
    from tests.helpers import MOVIE_LABELS, write_movie_slice
    from transferkit.export import ExportConfig, export_model
    from transferkit.models.loading import load_sequence_classifier, load_tokenizer

    root = tmp_path_factory.mktemp("real-export")
    data = write_movie_slice(root / "data", train=8, validation=16, test=16)
    model_dir = root / "model"
    load_sequence_classifier("minilm-l6", MOVIE_LABELS).save_pretrained(model_dir)
    load_tokenizer("minilm-l6").save_pretrained(model_dir)
    (model_dir / "labels.json").write_text(json.dumps(MOVIE_LABELS))
    exported = export_model(ExportConfig(model_dir, data, root / "onnx", target="cpu", max_length=32, threads=2,
                                         latency_runs=0, throughput_runs=0, max_drop=100))
    return exported, data


@pytest.fixture(scope="module")
def fitted_export(tmp_path_factory):
    """A MiniLM whose head separates the validation rows with a wide margin: decisive agreement inputs."""
    from tests.helpers import write_movie_slice
    from tests.unit.export import models
    from transferkit.export import ExportConfig, export_model

    root = tmp_path_factory.mktemp("fitted-export")
    data = write_movie_slice(root / "data", train=8, validation=16, test=16)
    model_dir = models.fitted_minilm(data, root / "model", split="validation")
    return export_model(ExportConfig(model_dir, data, root / "onnx", target="cpu", max_length=32, threads=2,
                                     latency_runs=0, throughput_runs=0, max_drop=100))


def test_output_of_the_real_export_step_serves(server, key_env, real_export):
    # The contract between `transferkit export` and this step, end to end: export_model's directory
    # (dynamic int8 recommended, tokenizer.json saved with padding/truncation) deploys and passes the smoke test
    # and the agreement check (validation sentences through Triton vs the fp32 graph's labels at export).
    from transferkit.data.prepared import load_prepared

    exported, data = real_export
    config = DeployConfig(onnx_dir=exported.out_dir, name="exported", repository=str(server.repository),
                          triton_url=server.http_url, api_key_env=key_env,
                          options=RepositoryOptions(instance_kind="cpu"))
    result = deploy_model(config)
    assert result.smoke_test["passed"] and result.smoke_test["tolerance"] == pytest.approx(0.1)  # int8 served
    # An untrained head: most fp32 labels are near-ties, which may flip with batching; only decisive ones count.
    agreement = result.agreement
    assert agreement["passed"] and agreement["inputs"] <= 16 and agreement["min_agreement"] == 0.9
    assert "agreement with fp32" in result.to_markdown()
    assert (server.repository / "exported_onnx" / str(result.version) / "model.onnx").stat().st_size == \
        (exported.out_dir / "model.int8.onnx").stat().st_size
    texts = load_prepared(data).texts("test")
    from transferkit.serve.repository import load_export

    expected = reference_logits(load_export(exported.out_dir), texts)
    with TritonControl(server.http_url) as control:
        served = control.infer_texts("exported", texts)
    np.testing.assert_allclose(served["logits"], expected, atol=0.1)


def test_fitted_model_agrees_with_fp32_on_every_decisive_input(server, key_env, fitted_export):
    config = DeployConfig(onnx_dir=fitted_export.out_dir, name="fitted", repository=str(server.repository),
                          triton_url=server.http_url, api_key_env=key_env,
                          options=RepositoryOptions(instance_kind="cpu"))
    agreement = deploy_model(config).agreement
    assert agreement["passed"] and agreement["inputs"] >= 12 and agreement["agreement"] >= 0.9
    assert agreement["export_agreement"] >= 0.9


def test_graph_that_disagrees_with_fp32_on_the_serving_node_is_rolled_back(server, key_env, fitted_export,
                                                                         tmp_path):
    # Fault injection standing in for int8 kernels that misbehave on the serving node's CPU: the int8 graph's
    # classifier bias is pushed so it answers one class. The smoke test compares the served graph with the same
    # graph in-process and passes; only the comparison with the fp32 labels stored at export can catch it.
    import onnx

    exported = fitted_export
    broken = tmp_path / "onnx"
    shutil.copytree(exported.out_dir, broken)
    graph = onnx.load(str(broken / "model.int8.onnx"))
    [bias] = [i for i in graph.graph.initializer if "classifier.bias" in i.name]
    # Push towards the label the fp32 graph gives least often (the untrained head is not seeded).
    fp32_labels = json.loads((broken / "agreement_sample.json").read_text())["labels"]
    rarest = min(range(len(exported.labels)), key=lambda i: fp32_labels.count(exported.labels[i]))
    pushed = np.full(len(exported.labels), -60.0, dtype=np.float32)
    pushed[rarest] = 60.0
    bias.CopyFrom(onnx.numpy_helper.from_array(pushed, bias.name))
    onnx.save(graph, str(broken / "model.int8.onnx"))
    config = DeployConfig(onnx_dir=broken, name="drifting", repository=str(server.repository),
                          triton_url=server.http_url, api_key_env=key_env,
                          options=RepositoryOptions(instance_kind="cpu"))
    with pytest.raises(DeploymentError, match=r"version 1 not deployed: agreement check failed: int8 graph as "
                                              r"served agrees with the fp32 graph on \d+\.\d% of \d+ decisive "
                                              r"validation inputs \(required \d+\.\d%: min_agreement 90%, "
                                              r"\d+\.\d% on the export node\).*rolled back \(no previous version"):
        deploy_model(config)
    with TritonControl(server.http_url, api_key=KEY) as control:
        assert control.ready_versions("drifting") == []
    # min_agreement 0 switches the check off (the smoke test alone passes this graph).
    config.min_agreement = 0.0
    assert deploy_model(config).agreement is None
