"""Bad options are refused before anything starts: one error line, non-zero exit, nothing left on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from transferkit.cli.main import app

runner = CliRunner()


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _refused(args: list[str], tmp_path: Path, pattern: str) -> None:
    before = _tree(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    assert pattern in lines[0], lines[0]
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(("content", "message"), [
    ("max_rows: lots\n", "pipeline parameter max_rows: 'lots' is not an integer (declared NUMBER_INTEGER)"),
    ("strategies: full\n", "pipeline parameter strategies: 'full' is not a list (declared LIST)"),
    ("epochs: three\n", "pipeline parameter epochs: 'three' is not a number (declared NUMBER_DOUBLE)"),
    ("preserve_source: 1\n", "pipeline parameter preserve_source: 1 is not true or false (declared BOOLEAN)"),
    ("max_length: true\n", "pipeline parameter max_length: True is not an integer"),
    ("base_model: 12\n", "pipeline parameter base_model: 12 is not a string (declared STRING)"),
    ("no_such_parameter: 1\n", "unknown pipeline parameter(s) no_such_parameter"),
])
def test_pipeline_parameters_of_the_wrong_type(tmp_path: Path, content: str, message: str) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(content)
    _refused(["pipeline", "run", "--local", "--params", str(params), "--work-dir", str(tmp_path / "work")],
             tmp_path, message)


@pytest.mark.parametrize(("extra", "message"), [
    (["--monitor-sample-rate", "1.5"], "monitor_sample_rate: expected a fraction in [0, 1], got 1.5"),
    (["--monitor-port", "70000"], "monitor_port: 70000 is not a TCP port; expected 1-65535"),
])
def test_pipeline_serve_monitor_options(tmp_path: Path, extra: list[str], message: str) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("monitor_url: ''\n")
    _refused(["pipeline", "run", "--local", "--serve", "--params", str(params), "--work-dir", str(tmp_path / "work"),
              *extra], tmp_path, message)


def test_pipeline_monitor_sample_rate_parameter_range(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("monitor_sample_rate: 2.0\n")
    _refused(["pipeline", "run", "--local", "--params", str(params), "--work-dir", str(tmp_path / "work")],
             tmp_path, "pipeline parameter monitor_sample_rate: 2.0 is outside [0, 1]")


@pytest.mark.parametrize(("url", "message"), [
    ("127.0.0.1:notaport", "triton_url: '127.0.0.1:notaport' has no valid port; expected an integer in 1-65535"),
    ("http://127.0.0.1:99999", "has no valid port"),
    ("http://127.0.0.1:0", "triton_url: port 0 in 'http://127.0.0.1:0' is outside 1-65535"),
    ("ftp://127.0.0.1:8000", "is not an http(s)://host:port URL"),
])
def test_deploy_with_a_bad_triton_url(tmp_path: Path, url: str, message: str) -> None:
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    _refused(["deploy", "--onnx", str(onnx), "--name", "sentiment", "--repository", str(tmp_path / "repo"),
              "--triton-url", url], tmp_path, message)


@pytest.mark.parametrize(("flag", "value"), [("--port", "70000"), ("--grpc-port", "-1"), ("--metrics-port", "65536")])
def test_serve_refuses_ports_outside_the_tcp_range(tmp_path: Path, flag: str, value: str) -> None:
    repository = tmp_path / "repository"
    repository.mkdir()
    field = {"--port": "http_port", "--grpc-port": "grpc_port", "--metrics-port": "metrics_port"}[flag]
    _refused(["serve", "--repository", str(repository), flag, value], tmp_path,
             f"{field}: {value} is not a TCP port; expected 1-65535")


def test_data_prepare_never_replaces_a_directory_of_the_users_own_files(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("not a transferkit output")
    _refused(["data", "prepare", "--dataset", "builtin:movie-sentiment", "--max-rows", "200", "--out", str(out)],
             tmp_path, f"out: {out} already holds files this command did not write (notes.txt)")
    assert (out / "notes.txt").read_text() == "not a transferkit output"
    (out / "notes.txt").unlink()  # empty: fine; a previous output: replaced on a re-run
    for rows in ("200", "300"):
        result = runner.invoke(app, ["data", "prepare", "--dataset", "builtin:movie-sentiment", "--max-rows", rows,
                                     "--out", str(out)])
        assert result.exit_code == 0, result.output
    assert (out / "schema.json").is_file()


def test_export_never_replaces_a_directory_of_the_users_own_files(tmp_path: Path) -> None:
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"someone else's graph")
    _refused(["export", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--out", str(out)],
             tmp_path, f"out: {out} already holds files this command did not write (model.onnx)")


def test_unclosed_quote_fails_cleanly_every_time(tmp_path: Path) -> None:
    """A parse error mid-file used to abort the interpreter at exit (exit 134) in some runs: a CSV reader thread."""
    import subprocess
    import sys

    rows = ["text,label", *(f"good movie number {i},1" for i in range(3000)), '"unclosed quote here,0',
            *(f"after {i},0" for i in range(3000))]
    data = tmp_path / "unclosed.csv"
    data.write_text("\n".join(rows) + "\n")
    code = ("import sys; from transferkit.cli.main import app; sys.argv = ['transferkit', 'data', 'prepare', "
            f"'--dataset', {str(data)!r}, '--out', {str(tmp_path / 'out')!r}]; app()")
    for _ in range(6):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 2, done.stderr[-500:]
        assert "row 3001: expected 2 fields, found 1" in done.stderr and "terminate called" not in done.stderr
    assert not (tmp_path / "out").exists()
