"""The kustomize tree and the Argo CD objects: rendered with the real ``kubectl kustomize``, validated strictly.

Built-in kinds go through ``kubernetes-validate`` (strict, 1.30), Argo CD's Application/AppProject
through the hand-written schemas in tests/schemas. Cross-checks tie the pieces together: the RBAC is
least-privilege and bound in the right namespace, the PVC names are the ones the chart and the
TrainJob launcher use, and each Application deploys the chart with the values file the gitops mode edits.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.k8s.validation import ManifestError, load_documents, validate_manifest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
ENVIRONMENTS = {"dev": "transferkit-dev", "prod": "transferkit"}
CLUSTER_SCOPED = {"Namespace"}


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return load_documents(result.stdout)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    targets = {"base": MANIFESTS / "base", "argocd": MANIFESTS / "argocd"}
    targets.update({env: MANIFESTS / "overlays" / env for env in ENVIRONMENTS})
    return {name: kustomize(path) for name, path in targets.items()}


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


@pytest.mark.parametrize("target", ["base", "dev", "prod", "argocd"])
def test_every_object_validates_strictly(rendered, target):
    docs = rendered[target]
    assert docs
    for doc in docs:
        validate_manifest(doc)


@pytest.mark.parametrize("env", sorted(ENVIRONMENTS))
def test_overlay_puts_everything_in_its_namespace(rendered, env):
    namespace = ENVIRONMENTS[env]
    docs = rendered[env]
    assert [d["metadata"]["name"] for d in find(docs, "Namespace")] == [namespace]
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["transferkit.io/environment"] == env
    (binding,) = find(docs, "RoleBinding", "transferkit-pipeline-runner")
    subjects = {(s["name"], s["namespace"]) for s in binding["subjects"]}
    assert subjects == {("transferkit-pipeline-runner", namespace), ("default-editor", namespace),
                        ("pipeline-runner", "kubeflow")}
    assert find(docs, "ServiceAccount", "transferkit-pipeline-runner")
    assert find(docs, "Role", binding["roleRef"]["name"])


def test_rbac_is_least_privilege_in_one_namespace(rendered):
    docs = rendered["base"]
    assert not [d for d in docs if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    (role,) = find(docs, "Role")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("serving.kserve.io",), ("inferenceservices",)): {"get", "create", "patch", "watch", "delete"},
        (("trainer.kubeflow.org",), ("trainjobs",)): {"create", "get", "watch", "delete"},
        (("",), ("pods",)): {"get", "list"},
        (("",), ("pods/log",)): {"get"},
    }
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]


def test_volumes_are_the_ones_chart_and_launcher_use(rendered):
    from transferkit.train import trainjob

    chart_values = yaml.safe_load((ROOT / "helm" / "transferkit-triton" / "values.yaml").read_text(encoding="utf-8"))
    claims = {d["metadata"]["name"]: d for d in find(rendered["prod"], "PersistentVolumeClaim")}
    assert chart_values["modelRepository"]["pvc"]["claimName"] in claims
    assert trainjob.DEFAULT_CHECKPOINT_PVC in claims
    for claim in claims.values():
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # shared across nodes in prod
    dev_claims = find(rendered["dev"], "PersistentVolumeClaim")
    assert {c["spec"]["resources"]["requests"]["storage"] for c in dev_claims} == {"20Gi", "5Gi"}


def test_network_policies_deny_by_default_and_admit_the_namespace(rendered):
    policies = {d["metadata"]["name"]: d["spec"] for d in find(rendered["base"], "NetworkPolicy")}
    deny = policies["transferkit-default-deny-ingress"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    same = policies["transferkit-allow-same-namespace"]
    assert same["ingress"] == [{"from": [{"podSelector": {}}]}]


def test_namespace_enforces_pod_security(rendered):
    (namespace,) = find(rendered["prod"], "Namespace")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"


@pytest.mark.parametrize("env", sorted(ENVIRONMENTS))
def test_argocd_applications_deploy_this_repository(rendered, env):
    docs = rendered["argocd"]
    (project,) = find(docs, "AppProject")
    destinations = {(d["server"], d["namespace"]) for d in project["spec"]["destinations"]}
    platform = find(docs, "Application", f"transferkit-platform-{env}")[0]["spec"]
    triton = find(docs, "Application", f"transferkit-triton-{env}")[0]["spec"]
    for app in (platform, triton):
        assert app["project"] == project["metadata"]["name"]
        assert app["source"]["repoURL"] in project["spec"]["sourceRepos"]
        assert app["destination"]["namespace"] == ENVIRONMENTS[env]
        assert (app["destination"]["server"], app["destination"]["namespace"]) in destinations
        assert (ROOT / app["source"]["path"]).is_dir()
        assert app["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert platform["source"]["path"] == f"manifests/overlays/{env}"
    assert triton["source"]["path"] == "helm/transferkit-triton"
    helm = triton["source"]["helm"]
    assert helm["skipTests"] is True and helm["releaseName"] == "transferkit-triton"
    # The values file is the one `transferkit deploy --mode gitops` rewrites (key model.version).
    (values_file,) = helm["valueFiles"]
    resolved = (ROOT / triton["source"]["path"] / values_file).resolve()
    assert resolved == ROOT / "helm" / "values" / f"{env}.yaml"
    assert "version" in yaml.safe_load(resolved.read_text(encoding="utf-8"))["model"]


@pytest.mark.parametrize("env", sorted(ENVIRONMENTS))
def test_appproject_admits_every_kind_the_environment_deploys(rendered, env):
    helm = pytest.importorskip("helm_python")
    (project,) = find(rendered["argocd"], "AppProject")
    allowed = {(k["group"], k["kind"]) for k in project["spec"]["namespaceResourceWhitelist"]}
    allowed |= {(k["group"], k["kind"]) for k in project["spec"]["clusterResourceWhitelist"]}
    values = yaml.safe_load((ROOT / "helm" / "values" / f"{env}.yaml").read_text(encoding="utf-8"))
    values = {**values, "test": {"enabled": False}}  # the Applications render with skipTests
    with helm.Chart.load(str(ROOT / "helm" / "transferkit-triton")) as chart:
        manifests = chart.render(values=values, name="transferkit-triton", namespace=ENVIRONMENTS[env])
    docs = rendered[env] + [d for path, text in manifests.items() if path.endswith(".yaml")
                            for d in load_documents(text)]
    for doc in docs:
        group = doc["apiVersion"].rpartition("/")[0]
        assert (group, doc["kind"]) in allowed, f"{doc['kind']} ({doc['apiVersion']}) is not in the AppProject"


def test_application_schema_is_strict(rendered):
    app = copy.deepcopy(find(rendered["argocd"], "Application", "transferkit-triton-prod")[0])
    app["spec"]["source"]["helm"]["valueFile"] = ["../values/prod.yaml"]
    with pytest.raises(ManifestError, match="valueFile"):
        validate_manifest(app)
    del app["spec"]["source"]["helm"]["valueFile"]
    del app["spec"]["project"]
    with pytest.raises(ManifestError, match="'project' is a required property"):
        validate_manifest(app)
