"""`pipeline run --local --serve`: the monitor started on the run's export baseline, and the options refused early."""

import json
import shutil
import socket
import urllib.request

import pytest

from tests.helpers import write_movie_slice
from tests.unit.serve.exported import shared_export
from transferkit.errors import ConfigError, ServingError
from transferkit.monitor import write_baseline


def _refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) != 0


def test_start_monitor_serves_the_export_baseline_and_stops(tmp_path, repo_root):
    from pipelines.transfer_learning.local_run import start_monitor

    export = tmp_path / "export"
    shutil.copytree(shared_export(), export)
    write_baseline(export, write_movie_slice(tmp_path / "data", train=8, validation=30, test=8), size=30)
    outputs = {"onnx-quantize": {"onnx_model": {"uri": str(export)}}}
    server = start_monitor(outputs, "movies", port=0, report_dir=tmp_path / "reports")
    try:
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as response:
            assert json.loads(response.read()) == {"status": "ok", "windows": 0}
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'transferkit_monitor_baseline_mean_confidence{model="movies"}' in metrics
    finally:
        server.shutdown()
    assert _refused(server.url)
    # An export without a baseline (a task without drift monitoring): no monitor, serving goes on.
    shutil.rmtree(export / "monitor_baseline")
    assert start_monitor(outputs, "movies", port=0, report_dir=tmp_path / "reports") is None


def test_monitor_options_refused_before_anything_starts(tmp_path, repo_root):
    from pipelines.transfer_learning.local_run import run_local

    package = repo_root / "pipelines/transfer_learning/pipeline.yaml"
    with pytest.raises(ConfigError, match=r"^monitor_sample_rate: expected a fraction in \[0, 1\], got 1.5$"):
        run_local({}, package=package, work_dir=tmp_path / "w", serve_forever=True, monitor_sample_rate=1.5)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServingError, match=f"^monitor_port: 127.0.0.1:{port} is not available"):
            run_local({}, package=package, work_dir=tmp_path / "w", serve_forever=True, monitor_port=port)
    assert not (tmp_path / "w").exists()
