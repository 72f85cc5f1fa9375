"""Progress display (rich): training bar with loss, lr, tokens/s and ETA; simple bars for evaluation.

On a terminal the bar redraws live. When output is not a terminal (`make demo > log`, CI, nohup, a notebook) a live
bar draws nothing, so a plain line is printed instead every `THINKTUNE_PROGRESS_SECONDS` (default 30) seconds and
when a task completes: `train 120/480 loss 0.5213 lr 9.1e-04 310 tok/s elapsed 1:02 ETA 3:05`; `status` (work
without a count: loading, exporting) prints a line per interval and then its duration.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class LineProgress(Progress):
    """A Progress that, on a console that is not a terminal, prints one plain line per interval and at the end."""

    def __init__(
        self, *columns, console: Console, label: str = "", fields: str = "", interval: float | None = None, **kwargs
    ):
        super().__init__(*columns, console=console, **kwargs)
        self.label = label
        self.fields = fields  # format string over the task's fields, e.g. "loss {loss:.4f}"
        self.interval = interval if interval is not None else float(os.environ.get("THINKTUNE_PROGRESS_SECONDS", 30))
        self.plain = not console.is_terminal
        self._last: dict[TaskID, float] = {}

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._line(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._line(task_id)

    def _line(self, task_id: TaskID) -> None:
        if not self.plain:
            return
        task = self._tasks[task_id]
        now = time.monotonic()
        done = task.total is not None and task.completed >= task.total
        if not done and now - self._last.get(task_id, task.start_time or now) < self.interval:
            return
        if done and self._last.get(task_id) == float("inf"):
            return  # the final line is printed once
        self._last[task_id] = float("inf") if done else now
        total = int(task.total) if task.total is not None else "?"
        try:
            extra = self.fields.format(**task.fields)
        except (KeyError, ValueError):
            extra = ""
        eta = "" if done else f" ETA {_clock(task.time_remaining)}"
        line = f"{self.label or task.description} {int(task.completed)}/{total} {extra} elapsed {_clock(task.elapsed)}"
        self.console.print(line.replace("  ", " ") + eta, markup=False, highlight=False, soft_wrap=True)


def training_progress(console: Console) -> Progress:
    return LineProgress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[tps]:.0f} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        label="train",
        fields="loss {loss:.4f} lr {lr:.2e} {tps:.0f} tok/s",
    )


def task_progress(console: Console, label: str) -> Progress:
    return LineProgress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        label=label,
    )


class _PlainStatus:
    """What `status` yields off a terminal: `update(text)` prints the new text as a line."""

    def __init__(self, console: Console):
        self.console = console

    def update(self, status: str = "", **_) -> None:
        if status:
            self.console.print(status, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def status(console: Console, message: str) -> Iterator[Any]:
    """`console.status(message)` on a terminal (a spinner); otherwise, since a spinner draws nothing into a log, a
    line every THINKTUNE_PROGRESS_SECONDS while the work runs and, if any was printed, one with its duration. Work
    shorter than that (or failing) prints nothing, so a one-line error stays one line."""
    if console.is_terminal:
        with console.status(message) as spinner:
            yield spinner
        return
    plain = message.replace("[bold]", "").replace("[/]", "")
    interval = float(os.environ.get("THINKTUNE_PROGRESS_SECONDS", 30))
    start, stop, beats = time.monotonic(), threading.Event(), []

    def heartbeat() -> None:
        while not stop.wait(max(interval, 0.01)):
            beats.append(1)
            line = f"{plain} … {_clock(time.monotonic() - start)}"
            console.print(line, markup=False, highlight=False, soft_wrap=True)

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    try:
        yield _PlainStatus(console)
    finally:
        stop.set()
        beat.join()
    if beats:
        line = f"{plain}: done in {_clock(time.monotonic() - start)}"
        console.print(line, markup=False, highlight=False, soft_wrap=True)
