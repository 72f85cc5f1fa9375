"""Progress when output is not a terminal: plain lines at an interval and at the end, nothing extra on a terminal."""

from __future__ import annotations

import io
import subprocess
import sys

from rich.console import Console

from thinktune.progress import task_progress, training_progress


def test_piped_output_gets_plain_progress_lines(monkeypatch):
    monkeypatch.setenv("THINKTUNE_PROGRESS_SECONDS", "0")
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with training_progress(console) as bar:
        task = bar.add_task("train", total=3, loss=float("nan"), lr=1e-3, tps=0.0)
        for step in range(1, 4):
            bar.update(task, completed=step, loss=1 / step, lr=1e-3, tps=50.0 * step)
    with task_progress(console, "eval after") as bar:
        task = bar.add_task("after", total=2)
        bar.advance(task, 2)
    lines = out.getvalue().splitlines()
    assert "train 2/3 loss 0.5000 lr 1.00e-03 100 tok/s elapsed 0:00 ETA" in "\n".join(lines)
    assert "train 3/3 loss 0.3333 lr 1.00e-03 150 tok/s elapsed 0:00" in lines
    assert "eval after 2/2 elapsed 0:00" in lines


def test_the_interval_holds_lines_back(monkeypatch):
    monkeypatch.setenv("THINKTUNE_PROGRESS_SECONDS", "3600")
    out = io.StringIO()
    with task_progress(Console(file=out, force_terminal=False, width=200), "eval") as bar:
        task = bar.add_task("eval", total=100)
        for _ in range(100):
            bar.advance(task, 1)
    plain = [x for x in out.getvalue().splitlines() if x.startswith("eval ") and "━" not in x]
    assert plain == ["eval 100/100 elapsed 0:00"]  # only the final line within the hour


def test_a_terminal_gets_the_live_bar_only():
    out = io.StringIO()
    with task_progress(Console(file=out, force_terminal=True, width=120), "eval") as bar:
        task = bar.add_task("eval", total=2)
        bar.advance(task, 2)
    assert "elapsed" not in out.getvalue()


def test_a_piped_cli_run_prints_progress_lines(tmp_path):
    """`thinktune eval ... > log`: what a user redirecting output sees (a real subprocess, stdout a pipe)."""
    code = (
        "from rich.console import Console\n"
        "from thinktune.progress import task_progress\n"
        "with task_progress(Console(), 'eval') as bar:\n"
        "    t = bar.add_task('eval', total=3)\n"
        "    [bar.advance(t, 1) for _ in range(3)]\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"THINKTUNE_PROGRESS_SECONDS": "0", "PATH": ""},
    )
    assert "eval 3/3 elapsed 0:00" in done.stdout, done.stdout + done.stderr


def test_status_off_a_terminal_prints_heartbeat_and_duration_of_long_work_only(monkeypatch):
    import time

    import pytest

    from thinktune.progress import status

    monkeypatch.setenv("THINKTUNE_PROGRESS_SECONDS", "0.05")
    out = io.StringIO()
    with status(Console(file=out, force_terminal=False, width=200), "exporting gguf to out/"):
        time.sleep(0.2)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("exporting gguf to out/ … 0:00")  # still running
    assert lines[-1] == "exporting gguf to out/: done in 0:00"
    monkeypatch.setenv("THINKTUNE_PROGRESS_SECONDS", "30")
    quiet = io.StringIO()
    with pytest.raises(RuntimeError), status(Console(file=quiet, force_terminal=False), "exporting"):
        raise RuntimeError("fails at once")  # a failing or short step adds no line to its one-line error
    assert quiet.getvalue() == ""
