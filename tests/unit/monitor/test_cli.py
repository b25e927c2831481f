"""`transferkit monitor` refuses bad input with one line and a non-zero exit."""

import pytest
from typer.testing import CliRunner

from transferkit.cli.main import app
from transferkit.errors import MonitorError
from transferkit.monitor.records import read_feedback


@pytest.mark.parametrize(("args", "message"), [
    (["monitor", "serve", "--baseline", "/nonexistent"], "expected a monitoring baseline"),
    (["monitor", "serve", "--baseline", "/nonexistent", "--event-sample-rate", "0"],
     "event_sample_rate: expected a fraction in (0, 1], got 0.0"),
    (["monitor", "replay", "--corpus", "reddit"], "corpus: 'reddit' is not one of"),
    (["monitor", "baseline", "--export", "x", "--data", "y", "--size", "3"], "size: expected an integer >= 10"),
])
def test_bad_options_fail_with_one_line(args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output and result.output.count("error:") == 1


def test_feedback_files(tmp_path):
    good = tmp_path / "labels.csv"
    good.write_text("request_id,label\nr1,positive\nr2,negative\n")
    assert read_feedback(good) == [("r1", "positive"), ("r2", "negative")]
    lines = tmp_path / "labels.jsonl"
    lines.write_text('{"request_id": "r1", "label": "positive"}\n\n{"request_id": "r2"}\n')
    with pytest.raises(MonitorError, match=r"labels.jsonl:3: expected a non-empty request_id and label"):
        read_feedback(lines)
    (tmp_path / "bad.csv").write_text("id,label\n1,x\n")
    with pytest.raises(MonitorError, match=r"missing column\(s\) \['request_id'\]"):
        read_feedback(tmp_path / "bad.csv")
    result = CliRunner().invoke(app, ["monitor", "feedback", str(good), "--monitor-url", "http://127.0.0.1:9"])
    assert result.exit_code != 0 and "monitor not reachable" in result.output
