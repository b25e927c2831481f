"""`transferkit serve` + `transferkit deploy --mode triton` + `transferkit bench serve`, as a user runs them."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.unit.serve.exported import shared_export
from transferkit.cli.main import app
from transferkit.serve.local import SHM_DIR, SHM_PREFIX

pytestmark = pytest.mark.integration
runner = CliRunner()


def _children(pid):
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid):
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def _shm_of(pids):
    regions = set()
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        regions |= {a.decode() for a in argv if a.startswith(SHM_PREFIX.encode())}
    return regions


def test_serve_deploy_curl_bench_then_ctrl_c_is_clean(tmp_path):
    export_dir = shared_export()
    repo = tmp_path / "repository"
    repo.mkdir()
    env = dict(os.environ, TK_CLI_KEY="cli-secret-key")
    process = subprocess.Popen(
        [sys.executable, "-m", "transferkit.cli.main", "serve", "--repository", str(repo), "--http-port", "0",
         "--grpc-port", "0", "--metrics-port", "0", "--api-key-env", "TK_CLI_KEY"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        output = "".join(lines)
        assert "Press Ctrl-C" in output, output
        assert "cli-secret-key" not in output
        http_url = re.search(r"^  HTTP\s+(http://\S+)$", output, re.M).group(1)
        grpc_url = re.search(r"^  gRPC\s+(\S+)$", output, re.M).group(1)
        metrics_url = re.search(r"^  metrics\s+(http://\S+)$", output, re.M).group(1)
        server_pid = int(re.search(r"^Triton ready \(pid (\d+)\)", output, re.M).group(1))

        os.environ["TK_CLI_KEY"] = "cli-secret-key"
        try:
            result = runner.invoke(app, [
                "deploy", "--onnx", str(export_dir), "--name", "minilm", "--mode", "triton", "--repository", str(repo),
                "--triton-url", http_url, "--api-key-env", "TK_CLI_KEY", "--instance-kind", "cpu",
                "--output", str(tmp_path / "record.json")])
        finally:
            os.environ.pop("TK_CLI_KEY")
        assert result.exit_code == 0, result.output
        record = json.loads((tmp_path / "record.json").read_text())
        assert record["version"] == 1 and record["smoke_test"]["passed"]
        assert (tmp_path / "record.md").read_text().startswith("# Deployment of `minilm` version 1")

        body = json.dumps({"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES",
                                       "data": ["A wonderful, moving film."]}]}).encode()
        request = urllib.request.Request(f"{http_url}/v2/models/minilm/infer", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            outputs = {o["name"]: o["data"] for o in json.loads(response.read())["outputs"]}
        assert outputs["label"][0] in ("negative", "positive")

        bench = runner.invoke(app, ["bench", "serve", "--model", "minilm", "--http-url", http_url, "--grpc-url",
                                    grpc_url, "--metrics-url", metrics_url, "--concurrency", "1,4",
                                    "--requests", "16", "--duration", "30", "--output", str(tmp_path / "b.json")])
        assert bench.exit_code == 0, bench.output
        sweep = json.loads((tmp_path / "b.json").read_text())
        assert sweep["total_errors"] == 0 and len(sweep["levels"]) == 4

        stubs = _children(server_pid)
        regions = _shm_of(stubs)
        assert stubs and regions
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, rest
    assert "Triton stopped" in rest
    assert not _alive(server_pid)
    assert [pid for pid in stubs if _alive(pid)] == []
    assert [r for r in regions if (SHM_DIR / r).exists()] == []


@pytest.mark.parametrize(("args", "pattern"), [
    (["--name", "../evil"], r"name: '../evil' must not contain path separators"),
    (["--name", "a/b"], r"must not contain path separators"),
    (["--onnx", "{empty}"], r"io_spec.json: missing"),
    (["--triton-url", "http://127.0.0.1:{port}", "--attempts", "2"], r"unreachable after 2 attempts"),
    (["--mode", "canary"], r"mode: expected one of"),
])
def test_deploy_bad_input_is_one_line_and_non_zero(tmp_path, args, pattern):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "empty").mkdir()
    base = {"--onnx": str(shared_export()), "--name": "minilm", "--repository": str(tmp_path / "repo"),
            "--triton-url": f"http://127.0.0.1:{port}", "--attempts": "1"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value.format(empty=tmp_path / "empty", port=port)
    argv = ["deploy"] + [x for pair in base.items() for x in pair]
    result = runner.invoke(app, argv)
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), result.output
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").rglob("*.pbtxt"))


def test_bench_refuses_remote_targets():
    result = runner.invoke(app, ["bench", "serve", "--model", "m", "--http-url", "http://10.1.2.3:8000",
                                 "--protocol", "http", "--metrics-url", ""])
    assert result.exit_code != 0
    assert "is not a loopback address" in result.output


def test_serve_stops_cleanly_on_sigterm(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "transferkit.cli.main", "serve", "--repository", str(tmp_path), "--http-port", "0",
         "--grpc-port", "0", "--metrics-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "Press Ctrl-C" in line:
            break
    output = "".join(lines)
    server_pid = int(re.search(r"^Triton ready \(pid (\d+)\)", output, re.M).group(1))
    assert "models: none" in output
    process.terminate()
    rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, rest
    assert not _alive(server_pid)
