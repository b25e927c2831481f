"""Publishing into a filesystem repository and into s3:// (a real moto server on loopback)."""

import json

import boto3
import pytest
from moto.server import ThreadedMotoServer

from transferkit.errors import AuthError, ConfigError, ServingError
from transferkit.serve.publish import LocalStore, S3Store, open_store
from transferkit.serve.repository import ModelBundle

MODELS = ["demo_onnx", "demo"]


def make_bundle(root, version, *, marker="a"):
    for model in MODELS:
        (root / model / str(version)).mkdir(parents=True)
        (root / model / str(version) / "weights.bin").write_bytes(f"{model}-{version}".encode())
        (root / model / "config.pbtxt").write_text(f'name: "{model}" # {marker}\n')
        (root / model / "configs").mkdir(exist_ok=True)
        (root / model / "configs" / "local.pbtxt").write_text(f'name: "{model}" # local {marker}\n')
    return ModelBundle(name="demo", root=root, version=version, models=list(MODELS))


def _exercise(store, tmp_path, read):
    assert store.next_version("demo", MODELS) == 1
    store.publish(make_bundle(tmp_path / "b1", 1, marker="one"))
    assert store.versions("demo_onnx") == [1]
    assert read("demo_onnx/1/weights.bin") == b"demo_onnx-1"
    assert store.next_version("demo", MODELS) == 2

    second = store.publish(make_bundle(tmp_path / "b2", 2, marker="two"))
    assert read("demo/config.pbtxt") == b'name: "demo" # two\n'
    second.undo()
    assert store.versions("demo") == [1]
    assert read("demo/config.pbtxt") == b'name: "demo" # one\n'
    assert read("demo/configs/local.pbtxt") == b'name: "demo" # local one\n'
    # The undone number is never reused.
    assert store.next_version("demo", MODELS) == 3
    assert store.record("demo")["high_water_version"] == 2

    for version in (3, 4):
        store.publish(make_bundle(tmp_path / f"b{version}", version))
    assert store.prune(MODELS, keep=2, protect=4) == [1]
    assert store.versions("demo_onnx") == [3, 4] and store.versions("demo") == [3, 4]

    with pytest.raises(ServingError, match="already exists"):
        store.publish(make_bundle(tmp_path / "dup", 4))
    assert read("demo_onnx/4/weights.bin") == b"demo_onnx-4"


def test_local_store(tmp_path):
    root = tmp_path / "repo"
    store = LocalStore(root)
    _exercise(store, tmp_path, lambda rel: (root / rel).read_bytes())
    leftovers = [p.name for p in root.rglob(".*") if p.name.startswith((".tmp-", ".old-"))]
    assert leftovers == []


def test_local_publish_failure_leaves_nothing(tmp_path):
    class Flaky(LocalStore):
        def put_version_dir(self, model, version, src):
            if model == "demo":
                raise OSError("disk full")
            super().put_version_dir(model, version, src)

    root = tmp_path / "repo"
    store = Flaky(root)
    with pytest.raises(OSError, match="disk full"):
        store.publish(make_bundle(tmp_path / "b1", 1))
    assert store.versions("demo_onnx") == []
    assert not list(root.rglob("*.pbtxt"))


def test_open_store_schemes(tmp_path):
    assert isinstance(open_store(tmp_path), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    assert isinstance(open_store("s3://bucket/models"), S3Store)
    with pytest.raises(ConfigError, match="unsupported scheme"):
        open_store("ftp://host/models")


@pytest.fixture(scope="module")
def moto_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(monkeypatch, moto_endpoint, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    return moto_endpoint


def test_s3_store(s3_env, tmp_path):
    client = boto3.client("s3", endpoint_url=s3_env)
    client.create_bucket(Bucket="models")
    store = S3Store("s3://models/triton", endpoint_url=s3_env)
    store.check_access()

    def read(rel):
        return client.get_object(Bucket="models", Key=f"triton/{rel}")["Body"].read()

    _exercise(store, tmp_path, read)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="models")["Contents"]]
    assert not [k for k in keys if "/.tmp-" in k]
    assert json.loads(read("demo/DEPLOYMENT.json"))["high_water_version"] == 4


def test_s3_missing_credentials(s3_env, monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3Store("s3://models/triton", endpoint_url=s3_env)
    with pytest.raises(AuthError, match="no S3 credentials"):
        store.check_access()


def test_s3_missing_bucket(s3_env):
    with pytest.raises(ServingError, match="bucket 'no-such-bucket' does not exist"):
        S3Store("s3://no-such-bucket/x", endpoint_url=s3_env).check_access()
