import pytest
from typer.testing import CliRunner

from tests.kfp_stub import KfpApiStub
from transferkit.cli.main import app

runner = CliRunner()
pytestmark = pytest.mark.integration


def test_submit_posts_the_compiled_spec_with_parameters_and_token(tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text("epochs: 1\nstrategies: [feature_extraction, full]\n")
    monkeypatch.setenv("KFP_TOKEN", "s3cr3t-token")
    with KfpApiStub(require_token="s3cr3t-token") as stub:
        result = runner.invoke(app, ["pipeline", "submit", "--host", stub.url, "--experiment", "movies",
                                     "--params", str(params), "--run-name", "nightly"])
    assert result.exit_code == 0, result.output
    assert "Submitted run run-1 to experiment movies" in result.output
    assert "s3cr3t-token" not in result.output
    assert [e["display_name"] for e in stub.experiments] == ["movies"]
    run = stub.runs[0]
    assert run["display_name"] == "nightly"
    assert run["experiment_id"] == "exp-1"
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == "transferkit-transfer-learning"
    assert run["runtime_config"]["parameters"] == {"epochs": 1, "strategies": ["feature_extraction", "full"]}


def test_submit_rejected_token_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "wrong")
    with KfpApiStub(require_token="right") as stub:
        result = runner.invoke(app, ["pipeline", "submit", "--host", stub.url])
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "submission failed" in last
    assert "Traceback" not in result.output
    assert "wrong" not in result.output


def test_submit_unreachable_host_fails_clearly():
    result = runner.invoke(app, ["pipeline", "submit", "--host", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "submission failed" in result.output
