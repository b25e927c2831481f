from typer.testing import CliRunner

from transferkit.cli.main import app

runner = CliRunner()


def test_help_lists_one_subcommand_per_step():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("data", "train", "evaluate", "forgetting", "export", "deploy", "serve", "pipeline", "models",
                    "bench"):
        assert command in result.output
