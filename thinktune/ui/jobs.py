"""Runs launched from the UI: `thinktune train|dpo|grpo` as a subprocess writing into the runs directory, its
console captured in <run>/console.log and its exact command in <run>/launch.json; stopped on request (SIGINT first,
as Ctrl-C would, then SIGTERM), which leaves <run>/stopped; resumed from the run's latest checkpoint with the same
command plus `--resume auto`."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from thinktune.errors import UserError
from thinktune.ui.runs_view import CONSOLE, STOPPED

LAUNCH = "launch.json"  # {"argv": [...]}: the command the UI started the run with


def command_line(command: str, base_config: Path | None, sets: list[str], run_dir: Path) -> list[str]:
    """The exact CLI call, as a user would type it."""
    args = [sys.executable, "-m", "thinktune", command]
    args += ["--config", str(base_config)] if base_config else []
    for item in sets:
        args += ["--set", item]
    return [*args, "--output-dir", str(run_dir)]


@dataclass
class Jobs:
    """The UI's own processes, by run directory name."""

    runs_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def launch(self, args: list[str], run_dir: Path, append: bool = False) -> subprocess.Popen:
        if self.alive(run_dir.name):
            raise UserError(f"{run_dir.name}: a run of that name is still running; stop it or pick another name")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / STOPPED).unlink(missing_ok=True)
        if not append:
            (run_dir / LAUNCH).write_text(json.dumps({"argv": args[3:]}) + "\n")
        log = open(run_dir / CONSOLE, "a" if append else "w")
        log.write("$ thinktune " + shlex.join(args[3:]) + "\n")
        log.flush()
        env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        log.close()  # the child holds its own descriptor
        self.procs[run_dir.name] = proc
        return proc

    def alive(self, name: str) -> bool | None:
        """True while running, False once ended, None when this UI did not launch it."""
        proc = self.procs.get(name)
        return None if proc is None else proc.poll() is None

    def stop(self, name: str, timeout: float = 20.0) -> str:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return f"{name}: not running from this UI"
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        (self.runs_dir / name / STOPPED).write_text(f"exit code {proc.returncode}\n")
        return f"{name}: stopped (exit code {proc.returncode})"

    def resume(self, run_dir: Path) -> subprocess.Popen:
        """The run's own command again with `--resume auto`, its console appended to."""
        return self.launch(resume_command(run_dir), run_dir, append=True)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name, timeout=5)


def resume_command(run_dir: Path) -> list[str]:
    """argv resuming a run the UI launched, from its latest checkpoint; one line when it cannot be resumed."""
    from thinktune.train.engine.checkpoint import list_checkpoints

    name = run_dir.name
    try:
        argv = json.loads((run_dir / LAUNCH).read_text())["argv"]
    except (OSError, ValueError, KeyError):
        raise UserError(
            f"{name}: not launched from this UI; resume it with its own command plus `--resume auto`"
        ) from None
    if not list_checkpoints(run_dir / "checkpoints"):
        raise UserError(f"{name}: no checkpoint to resume from (a run saves them every train.save_steps)")
    return [sys.executable, "-m", "thinktune", *argv, "--resume", "auto"]
