"""The Triton Helm chart: strict lint, renders of every supported value set, strict validation.

Helm is the real Helm v4 SDK (``helm-python-sdk``, no cluster). Rendered objects are validated with
``kubernetes-validate`` (strict, Kubernetes 1.30) and the hand-written CRD schemas in tests/schemas.
The last test starts the real local Triton server with the exact arguments the Deployment renders and
runs the chart's ``helm test`` script against it.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.k8s.validation import ManifestError, load_documents, validate_manifest
from transferkit import images

helm = pytest.importorskip("helm_python")

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[2] / "helm" / "transferkit-triton"
VALUES_DIR = CHART.parent / "values"
KUBE_VERSION = "v1.30.0"
NAMESPACE = "serving"
RELEASE = "tk"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "ReplicaSet"}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "pvc-gpu": {
        "models": ["sentiment", "topics"],
        "model": {"version": "3"},
        "modelRepository": {"type": "pvc", "pvc": {"claimName": "models-rwx", "subPath": "triton"}},
        "gpu": {"count": 2},
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "nvidia.com/gpu.count", "operator": "Gt", "values": ["0"]}]}]}}},
    },
    "s3-gpu": {
        "modelRepository": {"type": "s3", "s3": {
            "uri": "s3://https://minio.storage.svc:9000/models/triton", "region": "eu-west-1",
            "credentialsSecret": {"name": "s3-credentials", "accessKeyIdKey": "access_key",
                                  "secretAccessKeyKey": "secret_key", "sessionTokenKey": "session_token"}}},
        "networkPolicy": {"egress": {"enabled": True, "to": [
            {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 9000, "protocol": "TCP"}]}]}},
    },
    "cpu-only": {
        "gpu": {"count": 0},
        "modelRepository": {"modelConfigName": "local"},
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 8, "metric": "queueTime"},
        "podDisruptionBudget": {"enabled": True, "minAvailable": 1},
    },
    "cpu-vnni": {  # a --cpu-isa vnni export: CPU serving on VNNI nodes only, next to the user's pod affinity
        "gpu": {"count": 0},
        "modelRepository": {"modelConfigName": "local"},
        "cpuFeatures": {"requireVNNI": True},
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50,
            "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "transferkit-triton"}}}}]}},
    },
    "restricted-api": {
        "restrictedApi": {"enabled": True, "existingSecret": "triton-api-key", "secretKey": "key",
                          "apis": ["model-repository", "model-config"]},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "autoscaling": {"enabled": True, "metric": "cpu"},
        "podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None},
    },
}
VALUE_SETS["generative-cpu"] = {  # a decoupled python-backend generative model on CPU nodes
    "models": ["summarizer"],
    "gpu": {"count": 0},
    "modelRepository": {"modelConfigName": "local"},
    "generative": {"enabled": True},
}
for _env in ("dev", "prod"):
    VALUE_SETS[f"gitops-{_env}"] = yaml.safe_load((VALUES_DIR / f"{_env}.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def chart():
    loaded = helm.Chart.load(str(CHART))
    yield loaded
    loaded.close()


def render(chart, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    manifests = chart.render(values=copy.deepcopy(values) if values else None, name=RELEASE, namespace=NAMESPACE)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if not path.endswith(".txt"):
            docs += load_documents(text)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def triton_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "Pod":
        return [doc["spec"]]
    if doc["kind"] == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    return [doc["spec"]["template"]["spec"]]


# --- lint and schema --------------------------------------------------------------------------


def test_chart_metadata_follows_the_package_version(chart):
    assert chart.metadata["appVersion"] == images.TAG
    assert chart.version == images.TAG
    assert chart.values["image"]["repository"] == images.TRITON_IMAGE.rsplit(":", 1)[0]
    assert chart.values["image"]["tag"] == ""  # defaults to appVersion


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_strict_passes(name):
    report = helm.lint(str(CHART), VALUE_SETS[name], strict=True, kube_version=KUBE_VERSION)
    assert report["errors"] == []
    # Strict lint: nothing above "info" (the only info is the optional chart icon).
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_lint_strict_fails_on_bad_values():
    report = helm.lint(str(CHART), {"gpu": {"count": "two"}}, strict=True, kube_version=KUBE_VERSION)
    assert any("/gpu/count" in error for error in report["errors"]), report


def test_schema_is_strict_at_every_level(chart):
    schema = chart.schema
    unchecked = []

    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
            unchecked.append(path)
        for key, child in node.get("properties", {}).items():
            walk(child, f"{path}.{key}")

    walk(schema, "values")
    assert unchecked == []
    assert set(schema["properties"]) >= set(chart.values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        ({"image": {"tagg": "1.0"}}, "/image': additional properties 'tagg' not allowed"),
        ({"models": ["../etc"]}, "/models/0"),
        ({"gpu": {"count": -1}}, "/gpu/count': minimum"),
        ({"model": {"version": "v2"}}, "/model/version"),
        ({"modelRepository": {"type": "nfs"}}, "/modelRepository/type"),
        ({"modelRepository": {"type": "s3"}}, "/modelRepository/s3/uri': minLength"),
        ({"modelRepository": {"type": "s3", "s3": {"uri": "https://bucket/models"}}}, "/modelRepository/s3/uri"),
        ({"restrictedApi": {"enabled": True}}, "/restrictedApi/existingSecret': minLength"),
        ({"restrictedApi": {"apis": ["everything"]}}, "/restrictedApi/apis/0"),
        ({"containerSecurityContext": {"readOnlyRootFilesystem": False}},
         "/containerSecurityContext/readOnlyRootFilesystem': value must be true"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
        ({"shm": {"sizeLimit": "lots"}}, "/shm/sizeLimit"),
        ({"cpuFeatures": {"requireVNNI": True, "labels": []}}, "/cpuFeatures/labels"),
        ({"cpuFeatures": {"requireVNNI": "yes"}}, "/cpuFeatures/requireVNNI"),
        ({"autoscaling": {"metric": "gpu"}}, "/autoscaling/metric"),
        ({"probes": {"modelLoadBudgetSeconds": 1}}, "/probes/modelLoadBudgetSeconds': minimum"),
        ({"test": {"image": {"tag": "latest"}}}, "/test/image/tag"),
        ({"generative": {"probeTimeoutSeconds": 0}}, "/generative/probeTimeoutSeconds': minimum"),
        ({"generative": {"testRequest": '{"inputs": []}'}}, "/generative/testRequest"),
        ({"generative": {"enable": True}}, "/generative': additional properties 'enable' not allowed"),
    ],
)
def test_schema_rejects_bad_values_with_a_message_naming_the_key(chart, values, message):
    with pytest.raises(helm.HelmValuesError) as excinfo:
        chart.validate_schema(chart.merge_values(values))
    assert message in str(excinfo.value)


def test_no_model_starts_an_empty_ready_server_and_says_so(chart):
    docs = render(chart)  # the defaults: a first install before anything was published
    assert not [a for a in triton_container(docs)["args"] if a.startswith("--load-model")]
    env = {e["name"]: e.get("value") for e in by_kind(docs, "Pod")[0]["spec"]["containers"][0]["env"]}
    assert env["MODEL"] == ""
    notes = chart.render(name=RELEASE, namespace=NAMESPACE)["transferkit-triton/templates/NOTES.txt"]
    assert "WARNING: no model is loaded at startup" in notes
    docs = render(chart, {"model": {"name": "movies", "version": ""}})
    assert [a for a in triton_container(docs)["args"] if a.startswith("--load-model")] == ["--load-model=movies"]


def test_readiness_follows_the_served_model_not_the_whole_index(chart):
    # Triton keeps a version that failed to load as UNAVAILABLE: with --strict-readiness /v2/health/ready stays 400
    # after a rollback (seen on the real 2.51 server), while the model's own endpoint answers for its ready version.
    assert triton_container(render(chart))["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    docs = render(chart, {"model": {"name": "movies", "version": ""}})
    assert triton_container(docs)["readinessProbe"]["httpGet"]["path"] == "/v2/models/movies/ready"
    docs = render(chart, {"models": ["movies", "reviews"], "test": {"model": "reviews"}})
    assert triton_container(docs)["readinessProbe"]["httpGet"]["path"] == "/v2/models/reviews/ready"


def test_template_rejects_inverted_autoscaling_bounds(chart):
    with pytest.raises(helm.HelmError, match=r"minReplicas \(5\) must not exceed autoscaling.maxReplicas \(2\)"):
        render(chart, {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}})


# --- renders ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_rendered_object_validates_strictly(chart, name):
    docs = render(chart, VALUE_SETS[name])
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ServiceAccount", "Pod"} <= kinds
    for doc in docs:
        validate_manifest(doc)
        assert doc["metadata"].get("namespace") == NAMESPACE


def test_validation_is_strict_about_unknown_fields(chart):
    docs = render(chart)
    deployment = copy.deepcopy(by_kind(docs, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(ManifestError, match="securityContex"):
        validate_manifest(deployment)
    monitor = by_kind(render(chart, VALUE_SETS["restricted-api"]), "ServiceMonitor")[0]
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(ManifestError, match="intervall"):
        validate_manifest(monitor)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_no_workload_renders_a_container_without_a_security_context(chart, name):
    workloads = [d for d in render(chart, VALUE_SETS[name]) if d["kind"] in WORKLOAD_KINDS]
    assert workloads
    for doc in workloads:
        for spec in pod_specs(doc):
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
            for container in spec.get("initContainers", []) + spec["containers"]:
                ctx = container.get("securityContext")
                assert ctx, f"{doc['kind']}/{doc['metadata']['name']}: container {container['name']} has none"
                assert ctx["runAsNonRoot"] is True
                assert ctx["allowPrivilegeEscalation"] is False
                assert ctx["readOnlyRootFilesystem"] is True
                assert ctx["capabilities"]["drop"] == ["ALL"]
                assert ctx["seccompProfile"]["type"] == "RuntimeDefault"


def _probes(docs: list[dict[str, Any]]) -> dict[str, Any]:
    container = triton_container(docs)
    (deployment,) = by_kind(docs, "Deployment")
    exit_timeout = next(a for a in container["args"] if a.startswith("--exit-timeout-secs="))
    env = {e["name"]: e.get("value") for e in by_kind(docs, "Pod")[0]["spec"]["containers"][0]["env"]}
    return {"startup": container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"],
            "ready": container["readinessProbe"]["timeoutSeconds"],
            "live": container["livenessProbe"]["timeoutSeconds"],
            "exit": int(exit_timeout.split("=")[1]),
            "grace": deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
            "generate": env["GENERATE"], "request": env["REQUEST"]}


def test_generative_values_fit_loading_and_streaming(chart):
    default = _probes(render(chart))
    assert default == {"startup": 600, "ready": 3, "live": 5, "exit": 30, "grace": 60, "generate": "false",
                       "request": chart.values["test"]["request"]}
    generative = _probes(render(chart, VALUE_SETS["generative-cpu"]))
    assert generative == {"startup": 1800, "ready": 10, "live": 10, "exit": 120, "grace": 135, "generate": "true",
                          "request": chart.values["generative"]["testRequest"]}
    # Configurable: a bigger budget at a slower period, and general values above the generative ones win.
    tuned = _probes(render(chart, {"generative": {"enabled": True, "modelLoadBudgetSeconds": 3000},
                                   "probes": {"startup": {"periodSeconds": 20, "timeoutSeconds": 5},
                                              "liveness": {"timeoutSeconds": 30, "periodSeconds": 60,
                                                           "failureThreshold": 3}},
                                   "server": {"exitTimeoutSeconds": 300}, "terminationGracePeriodSeconds": 600}))
    assert (tuned["startup"], tuned["live"], tuned["exit"], tuned["grace"]) == (3000, 30, 300, 600)
    (deployment,) = by_kind(render(chart, {"generative": {"enabled": True, "modelLoadBudgetSeconds": 3000},
                                           "probes": {"startup": {"periodSeconds": 20, "timeoutSeconds": 5}}}),
                            "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["failureThreshold"] == 150


def test_pvc_gpu_values(chart):
    docs = render(chart, VALUE_SETS["pvc-gpu"])
    container = triton_container(docs)
    args = container["args"]
    assert container["image"] == images.TRITON_IMAGE
    assert args[:4] == ["--model-repository=/models", "--model-control-mode=explicit",
                        "--load-model=sentiment", "--load-model=topics"]
    assert "--strict-readiness=true" in args
    assert "--allow-gpu-metrics=true" in args
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "model-repository")
    assert mount == {"name": "model-repository", "mountPath": "/models", "readOnly": True, "subPath": "triton"}
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["model-repository"]["persistentVolumeClaim"] == {"claimName": "models-rwx", "readOnly": True}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/dev/shm"}
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "nodeAffinity" in pod["spec"]["affinity"]
    assert pod["metadata"]["annotations"]["transferkit.io/model-version"] == "3"
    # The startup probe's budget covers loading every model; readiness follows the served model afterwards.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/sentiment/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    service = by_kind(docs, "Service")[0]
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("http", 8000), ("grpc", 8001),
                                                                          ("metrics", 8002)}
    test_pod = by_kind(docs, "Pod")[0]
    env = {e["name"]: e.get("value") for e in test_pod["spec"]["containers"][0]["env"]}
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert env["MODEL"] == "sentiment" and env["MODEL_VERSION"] == "3"
    assert env["TRITON_URL"] == f"http://{RELEASE}-transferkit-triton.{NAMESPACE}.svc:8000"
    # The test Pod must not be picked up by the Service or the Deployment.
    selector = service["spec"]["selector"]
    assert not selector.items() <= test_pod["metadata"]["labels"].items()


def test_s3_gpu_values(chart):
    docs = render(chart, VALUE_SETS["s3-gpu"])
    container = triton_container(docs)
    assert container["args"][0] == "--model-repository=s3://https://minio.storage.svc:9000/models/triton"
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_DEFAULT_REGION"]["value"] == "eu-west-1"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "s3-credentials", "key": "access_key"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secret_key"
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "session_token"
    pod_spec = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    assert "model-repository" not in {v["name"] for v in pod_spec["volumes"]}
    policy = by_kind(docs, "NetworkPolicy")[0]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert {p["port"] for p in policy["egress"][0]["ports"]} == {53}
    assert policy["egress"][1]["to"][0]["ipBlock"]["cidr"] == "10.20.0.0/16"


def test_cpu_only_values(chart):
    docs = render(chart, VALUE_SETS["cpu-only"])
    container = triton_container(docs)
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert "--allow-gpu-metrics=false" in container["args"]
    assert "--model-config-name=local" in container["args"]
    deployment = by_kind(docs, "Deployment")[0]
    assert "replicas" not in deployment["spec"]  # owned by the HPA
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "avg_time_queue_us"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "50000"}
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]


def test_vnni_exports_are_pinned_to_vnni_nodes(chart):
    from transferkit.hardware import NFD_VNNI_LABELS

    spec = by_kind(render(chart, VALUE_SETS["cpu-vnni"]), "Deployment")[0]["spec"]["template"]["spec"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    # One term per label: the scheduler ORs terms, so any VNNI flavour qualifies.
    assert [t["matchExpressions"] for t in terms] == [
        [{"key": label, "operator": "In", "values": ["true"]}] for label in NFD_VNNI_LABELS]
    assert spec["affinity"]["podAntiAffinity"] == VALUE_SETS["cpu-vnni"]["affinity"]["podAntiAffinity"]
    default = by_kind(render(chart, VALUE_SETS["cpu-only"]), "Deployment")[0]["spec"]["template"]["spec"]
    assert "affinity" not in default  # the portable recipe runs anywhere
    with pytest.raises(helm.HelmError, match=r"cpuFeatures.requireVNNI: affinity.nodeAffinity.required"):
        render(chart, {**VALUE_SETS["pvc-gpu"], "cpuFeatures": {"requireVNNI": True}})


def test_restricted_api_values_keep_the_key_out_of_the_manifest(chart):
    docs = render(chart, VALUE_SETS["restricted-api"])
    container = triton_container(docs)
    assert ("--http-restricted-api=model-repository,model-config:triton-model-control-key="
            "$(TRITON_RESTRICTED_API_KEY)") in container["args"]
    assert ("--grpc-restricted-protocol=model-repository,model-config:triton-model-control-key="
            "$(TRITON_RESTRICTED_API_KEY)") in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TRITON_RESTRICTED_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "triton-api-key", "key": "key"}
    test_env = {e["name"]: e for e in by_kind(docs, "Pod")[0]["spec"]["containers"][0]["env"]}
    assert test_env["API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "triton-api-key"
    assert "runAsUser" not in by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["securityContext"]
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert by_kind(docs, "HorizontalPodAutoscaler")[0]["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_optional_objects_are_off_by_default(chart):
    kinds = [d["kind"] for d in render(chart)]
    assert "ServiceMonitor" not in kinds and "HorizontalPodAutoscaler" not in kinds
    kinds = [d["kind"] for d in render(chart, {"networkPolicy": {"enabled": False}, "test": {"enabled": False},
                                               "podDisruptionBudget": {"enabled": False},
                                               "serviceAccount": {"create": False, "name": "existing"}})]
    assert sorted(kinds) == ["Deployment", "Service"]


def test_image_digest_takes_precedence(chart):
    digest = "sha256:" + "a" * 64
    container = triton_container(render(chart, {"image": {"digest": digest}}))
    assert container["image"] == f"{images.TRITON_IMAGE.rsplit(':', 1)[0]}@{digest}"


def test_notes_mention_helm_test(chart):
    notes = chart.render(name=RELEASE, namespace=NAMESPACE)["transferkit-triton/templates/NOTES.txt"]
    assert f"helm test {RELEASE} -n {NAMESPACE}" in notes
    assert "rollout status deployment/tk-transferkit-triton" in notes


# --- the rendered arguments and the helm test script against the real local Triton -------------

ECHO_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "text").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("label", text)]))
        return responses
"""


def _write_repository(root: Path, name: str) -> None:
    """A tiny ensemble with transferkit's entry-point shape (string "text" in) over a python model."""
    (root / f"{name}_py" / "1").mkdir(parents=True)
    (root / f"{name}_py" / "1" / "model.py").write_text(ECHO_MODEL)
    (root / f"{name}_py" / "config.pbtxt").write_text(
        f'name: "{name}_py"\nbackend: "python"\nmax_batch_size: 8\n'
        'input [{ name: "text" data_type: TYPE_STRING dims: [1] }]\n'
        'output [{ name: "label" data_type: TYPE_STRING dims: [1] }]\n'
        "instance_group [{ kind: KIND_CPU count: 1 }]\n")
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "ENSEMBLE.txt").write_text("")
    (root / name / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 8\n'
        'input [{ name: "text" data_type: TYPE_STRING dims: [1] }]\n'
        'output [{ name: "label" data_type: TYPE_STRING dims: [1] }]\n'
        f'ensemble_scheduling {{ step [{{ model_name: "{name}_py" model_version: -1 '
        'input_map { key: "text" value: "text" } output_map { key: "label" value: "label" } }] }\n')


def _local_args(args: list[str], repository: Path, ports: dict[str, int], key: str) -> list[str]:
    """The chart's arguments, adapted only where a laptop differs from a pod: paths and ports."""
    flags = {"--http-port": ports["http"], "--grpc-port": ports["grpc"], "--metrics-port": ports["metrics"]}
    out = []
    for arg in args:
        name = arg.split("=", 1)[0]
        if name == "--model-repository":
            arg = f"--model-repository={repository}"
        elif name in flags:
            arg = f"{name}={flags[name]}"
        out.append(arg.replace("$(TRITON_RESTRICTED_API_KEY)", key))  # what the kubelet expands
    return [*out, "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"]


SHM_PREFIX = "triton_python_backend_shm_region_"


def _shm_regions_of_session(session_id: int) -> set[str]:
    """Shared-memory regions named on the command lines of the processes in ``session_id`` (the stubs)."""
    regions = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) != session_id:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        regions.update(a.decode() for a in argv if a.startswith(SHM_PREFIX.encode()))
    return regions


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=b"{}", headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_rendered_args_start_triton_and_the_helm_test_script_passes(chart, tmp_path):
    install_module = pytest.importorskip("transferkit.serve.install")
    local_module = pytest.importorskip("transferkit.serve.local")
    if shutil.which("curl") is None:
        pytest.skip("the helm test script needs curl")
    triton = install_module.install_triton()
    _write_repository(tmp_path / "repo", "sentiment")
    docs = render(chart, {"models": ["sentiment"], "model": {"version": "1"}, "gpu": {"count": 0},
                          "restrictedApi": {"enabled": True, "existingSecret": "api-key"}})
    container = triton_container(docs)
    test_container = by_kind(docs, "Pod")[0]["spec"]["containers"][0]
    key = "k-" + os.urandom(8).hex()
    ports = {name: local_module.free_port() for name in ("http", "grpc", "metrics")}
    cmd = [str(triton.tritonserver), *_local_args(container["args"], tmp_path / "repo", ports, key),
           f"--backend-directory={triton.backends_dir}", f"--cache-directory={triton.cache_dir}"]
    log = (tmp_path / "triton.log").open("w")
    server = subprocess.Popen(cmd, env=triton.environment(), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{ports['http']}"
    regions: set[str] = set()
    try:
        script_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TRITON_URL": base,
                      "API_HEADER": "triton-model-control-key", "API_KEY": key}
        for item in test_container["env"]:
            if "value" in item:
                script_env[item["name"]] = item["value"]
        script_env["TRITON_URL"] = base  # the in-cluster Service name does not resolve here
        script = test_container["args"][0]
        passed = subprocess.run(["sh", "-c", script], env=script_env, capture_output=True, text=True, timeout=120)
        regions |= _shm_regions_of_session(server.pid)
        assert passed.returncode == 0, passed.stdout + passed.stderr + (tmp_path / "triton.log").read_text()
        assert '"data":["A gripping, beautifully acted film."]' in passed.stdout
        assert "OK: sentiment answered" in passed.stdout
        assert key not in passed.stdout + passed.stderr

        # A version that was never published fails the hook.
        stale = subprocess.run(["sh", "-c", script], env={**script_env, "MODEL_VERSION": "7"},
                               capture_output=True, text=True, timeout=60)
        assert stale.returncode != 0
        assert "versions/7/ready" in stale.stdout

        # Without a model to call, the hook checks readiness only.
        bare = subprocess.run(["sh", "-c", script], env={**script_env, "MODEL": "", "MODEL_VERSION": ""},
                              capture_output=True, text=True, timeout=60)
        assert bare.returncode == 0 and "OK: server ready; no model configured" in bare.stdout

        # The restricted model-control API rendered by the chart really is restricted.
        assert _status(f"{base}/v2/repository/index") == 403
        assert _status(f"{base}/v2/repository/index", {"triton-model-control-key": key}) == 200
    finally:
        regions |= _shm_regions_of_session(server.pid)  # the server leads its own session
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()
        for region in regions:  # a stopped python-backend stub may leave its region behind
            Path("/dev/shm", region).unlink(missing_ok=True)


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_gitops_contract_with_the_deploy_steps_writer(chart, env, tmp_path):
    """`transferkit deploy --mode gitops` rewrites key `model` of helm/values/<env>.yaml; the chart follows."""
    gitops = pytest.importorskip("transferkit.serve.gitops")
    values_file = tmp_path / f"{env}.yaml"
    shutil.copy(VALUES_DIR / f"{env}.yaml", values_file)
    written = {"name": "movies", "version": 5, "repositoryUri": "s3://models/triton"}
    assert gitops.update_values_file(values_file, "model", written)
    values = yaml.safe_load(values_file.read_text(encoding="utf-8"))
    assert values["model"] == written
    report = helm.lint(str(CHART), values, strict=True, kube_version=KUBE_VERSION)
    assert report["errors"] == []
    docs = render(chart, values)
    args = triton_container(docs)["args"]
    assert [a for a in args if a.startswith("--load-model")] == ["--load-model=movies"]
    annotations = by_kind(docs, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["transferkit.io/model-version"] == "5"  # a new version rolls the pods
    assert annotations["transferkit.io/repository-uri"] == "s3://models/triton"
    env_vars = {e["name"]: e.get("value") for e in by_kind(docs, "Pod")[0]["spec"]["containers"][0]["env"]}
    assert (env_vars["MODEL"], env_vars["MODEL_VERSION"]) == ("movies", "5")
