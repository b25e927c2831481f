"""`transferkit tune` refuses bad input with one line and a non-zero exit, before any trial runs."""

from typer.testing import CliRunner

from tests.helpers import write_movie_slice
from transferkit.cli.main import app


def test_bad_space_and_options_fail_with_one_line(tmp_path):
    data = write_movie_slice(tmp_path / "data", train=8, validation=4, test=4)
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  lr: {low: 1.0e-5, high: 1.0e-3}\n")
    runner = CliRunner()
    base = ["tune", "--data", str(data), "--model", "minilm-l6", "--space", str(space), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, base)
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {space}: params.lr: not a train option (see `transferkit train --help`)"
    assert not (tmp_path / "o").exists()
    space.write_text("params:\n  llrd: {low: 0.5, high: 1.0}\n")
    result = runner.invoke(app, [*base, "--jobs", "0"])
    assert result.exit_code == 2 and result.output.strip() == "error: jobs: expected an integer >= 1, got 0"
    result = runner.invoke(app, [*base, "--min-retention", "0.5"])
    assert result.exit_code == 2 and "min_retention: needs `retention: true`" in result.output
