"""The chart's monitoring option: the monitor beside Triton, its ServiceMonitor, alerts and dashboard.

Renders with the Helm library, validates every object strictly (built-in kinds and the hand-written
ServiceMonitor/PrometheusRule schemas), checks that the alerts and the dashboard query only metrics the monitor
and the served models really expose, and runs the rendered monitor command line for real.
"""

import copy
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.unit.k8s.validation import load_documents, validate_manifest

helm = pytest.importorskip("helm_python")

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[2] / "helm" / "transferkit-triton"
KUBE_VERSION = "v1.30.0"
RELEASE, NAMESPACE = "tk", "serving"
VALUES: dict[str, Any] = {
    "model": {"name": "sentiment", "version": "3"},
    "serviceMonitor": {"enabled": True},
    "monitor": {"enabled": True, "windowSize": 100, "prometheusRule": {"enabled": True, "minAccuracy": 0.8,
                                                                        "maxGroupGap": 0.2},
                "grafanaDashboard": {"enabled": True}},
}


@pytest.fixture(scope="module")
def chart():
    loaded = helm.Chart.load(str(CHART))
    yield loaded
    loaded.close()


def render(chart, values):
    manifests = chart.render(values=copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
    docs = []
    for path, text in sorted(manifests.items()):
        if not path.endswith(".txt"):
            docs += load_documents(text)
    return docs


def _named(docs, kind, suffix=""):
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]


def test_lint_strict_and_every_object_validates(chart):
    report = helm.lint(str(CHART), VALUES, strict=True, kube_version=KUBE_VERSION)
    assert report["errors"] == []
    docs = render(chart, VALUES)
    for doc in docs:
        validate_manifest(doc)
    assert len(_named(docs, "Deployment", "-monitor")) == 1 and len(_named(docs, "ServiceMonitor")) == 2
    assert len(_named(docs, "PrometheusRule")) == 1 and len(_named(docs, "ConfigMap", "-dashboard")) == 1
    assert not _named(render(chart, {"model": {"name": "sentiment", "version": "3"}}), "Deployment", "-monitor")


def test_monitor_pods_are_not_behind_the_inference_service(chart):
    docs = render(chart, VALUES)
    (monitor,) = _named(docs, "Deployment", "-monitor")
    pod_labels = monitor["spec"]["template"]["metadata"]["labels"]
    triton_service = next(d for d in docs if d["kind"] == "Service" and not d["metadata"]["name"].endswith("monitor"))
    assert not set(triton_service["spec"]["selector"].items()) <= set(pod_labels.items())
    (container,) = monitor["spec"]["template"]["spec"]["containers"]
    assert "--baseline=/models/sentiment/3/monitor_baseline" in container["args"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize(("values", "message"), [
    ({"monitor": {"enabled": True}}, "monitor.baselinePath or model.name and model.version"),
    ({"monitor": {"enabled": True, "baselinePath": "m/1/monitor_baseline"},
      "modelRepository": {"type": "s3", "s3": {"uri": "s3://bucket/models"}}}, "needs modelRepository.type pvc"),
])
def test_unusable_monitor_values_fail_with_a_message(chart, values, message):
    with pytest.raises(Exception, match=re.escape(message)):
        render(chart, values)


def _exposed_metric_names(tmp_path) -> set[str]:
    """Names on the monitor's /metrics after a window, plus the Triton custom metrics of the served model."""
    from transferkit.monitor import DriftConfig
    from transferkit.monitor.baseline import Baseline
    from transferkit.monitor.state import Monitor

    rng = np.random.default_rng(0)
    baseline = Baseline(["negative", "positive"], rng.normal(size=(50, 4)), rng.integers(0, 2, 50),
                        rng.uniform(0.5, 1, 50), {"length": rng.uniform(5, 30, 50)})
    monitor = Monitor(baseline, DriftConfig(window_size=10, permutations=200), None, background=False)
    monitor.add([{"request_id": str(i), "embedding": [0.1] * 4, "prediction": i % 2, "confidence": 0.9,
                  "length": 10, "group": "ab"[i % 2]} for i in range(10)])
    monitor.feedback([("1", "positive")])
    names = {line.split("{")[0].split(" ")[0] for line in monitor.metrics.exposition().decode().splitlines()
             if line and not line.startswith("#")}
    source = (Path(__file__).resolve().parents[2] / "src/transferkit/serve/triton_models/monitor_client.py").read_text()
    return names | set(re.findall(r'"(transferkit_[a-z_]+)"', source))


def test_alerts_and_dashboard_query_real_metric_names(chart, tmp_path):
    exposed = _exposed_metric_names(tmp_path)
    docs = render(chart, VALUES)
    (rule,) = _named(docs, "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"TransferkitEmbeddingDrift", "TransferkitLiveAccuracyLow", "TransferkitGroupRateGap"} <= alerts
    (dashboard_map,) = _named(docs, "ConfigMap", "-dashboard")
    dashboard = json.loads(dashboard_map["data"]["transferkit-monitor.json"])
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\btransferkit_[a-z_]+", expr)}
    assert used and used <= exposed, used - exposed
    assert any('test="embedding_mmd"' in e for e in exprs)


def test_rendered_monitor_command_runs(chart, tmp_path):
    from transferkit.monitor.baseline import Baseline

    rng = np.random.default_rng(1)
    baseline = Baseline(["negative", "positive"], rng.normal(size=(40, 4)), rng.integers(0, 2, 40),
                        rng.uniform(0.5, 1, 40), {"length": rng.uniform(5, 30, 40)}, {"split": "validation"})
    baseline.save(tmp_path / "sentiment/3/monitor_baseline")
    (container,) = _named(render(chart, VALUES), "Deployment", "-monitor")[0]["spec"]["template"]["spec"]["containers"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [a.replace("/models/", f"{tmp_path}/").replace("/reports", str(tmp_path / "reports"))
            .replace("--host=0.0.0.0", "--host=127.0.0.1").replace("--port=8008", f"--port={port}")
            for a in container["args"][1:]]
    process = subprocess.Popen([sys.executable, "-m", "transferkit.cli.main", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    assert json.loads(response.read())["status"] == "ok"
                    break
            except OSError:
                assert process.poll() is None, process.stdout.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert 'transferkit_monitor_baseline_mean_confidence{model="sentiment"}' in response.read().decode()
    finally:
        process.terminate()
        process.wait(timeout=20)
