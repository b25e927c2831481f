"""Crash consistency with real processes: Ctrl-C says what was kept, a killed run's staging is removed next time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from transferkit.cli.main import app

CLI = [sys.executable, "-c", "from transferkit.cli.main import main; main()"]


def test_ctrl_c_during_data_prepare_says_what_was_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "400"}
    process = subprocess.Popen([*CLI, "data", "prepare", "--dataset", "builtin:movie-sentiment", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stderr is not None
    started = ""
    deadline = time.monotonic() + 120
    while "Reading builtin:movie-sentiment" not in started and time.monotonic() < deadline:
        started += process.stderr.readline()  # the step logs "Reading ..." once its work has begun
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    text = started + stderr
    assert process.returncode == 130, text[-2000:]
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: interrupted; {out} was left as it was (an output is replaced only when its step "
                      "completes); re-run the same command to start again"], text[-2000:]
    assert "Traceback" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_killed_runs_staging_directory_is_removed_and_named_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from transferkit.io import atomic_output_dir\n"
        f"with atomic_output_dir({str(out)!r}) as tmp:\n"
        "    (tmp / 'train.parquet').write_bytes(b'half'); print(tmp, flush=True); time.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    staging = Path(holder.stdout.readline().strip())
    assert staging.is_dir() and staging.parent == tmp_path
    holder.send_signal(signal.SIGKILL)  # no cleanup runs: the staging directory stays behind
    holder.wait(timeout=30)
    assert staging.is_dir()

    data = tmp_path / "data.csv"
    data.write_text("text,label\n" + "".join(f"sentence {i} about a film,{'pos' if i % 2 else 'neg'}\n"
                                             for i in range(60)))
    result = CliRunner().invoke(app, ["data", "prepare", "--dataset", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not staging.exists()
    # The log wraps long paths at the terminal width: compare without whitespace.
    logged = "".join(result.stderr.split())
    assert "".join(f"removed {staging}: incomplete output of an interrupted run".split()) in logged, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "out"]
