"""What the UI shows of the runs under the runs directory: a table row per run, a run's metric series and images.

A run's status: `running` while the UI's own process for it lives (or, for runs started elsewhere, while
metrics.jsonl changed in the last RECENT seconds), `finished` once summary.json exists, `stopped` when the UI stopped
it (jobs.py leaves STOPPED in the run), else `failed` (the run ended without a summary).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from thinktune.runs import CONFIG, SUMMARY, is_run_dir

METRICS = "metrics.jsonl"
CONSOLE = "console.log"  # what a run launched from the UI printed (jobs.py)
STOPPED = "stopped"  # left by the UI's Stop button (jobs.py)
RECENT = 120.0
CURVES = ("loss", "lr", "grad_norm", "tokens_per_second")
COLUMNS = ["run", "status", "recipe", "method", "model", "before acc", "after acc", "steps", "wall time"]


def run_dirs(runs_dir: Path) -> list[Path]:
    """Run directories (a config.yaml, or a UI console.log before training wrote one), newest first."""
    if not runs_dir.is_dir():
        return []
    found = [p for p in runs_dir.iterdir() if p.is_dir() and (is_run_dir(p) or (p / CONSOLE).is_file())]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_metric_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl that may be being written: a torn last line is left for the next read."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def status(run: Path, alive: bool | None = None, now: float | None = None) -> str:
    """running / finished / stopped / failed; `alive`: whether the UI's own process for this run still runs (None: not
    launched from this UI)."""
    if (run / SUMMARY).is_file():
        return "finished"
    if alive:
        return "running"
    if (run / STOPPED).is_file():
        return "stopped"
    if alive is None:
        newest = max((f.stat().st_mtime for f in (run / METRICS, run / CONSOLE) if f.is_file()), default=None)
        if newest is not None and (now or time.time()) - newest < RECENT:
            return "running"
    return "failed"


def _pct(d: dict | None, key: str = "accuracy") -> str:
    return f"{d[key]:.1%}" if d and isinstance(d.get(key), (int, float)) else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def run_row(run: Path, alive: bool | None = None) -> list[str]:
    summary = read_json(run / SUMMARY) or {}
    recipe, method, model = summary.get("recipe"), summary.get("method"), summary.get("model")
    if not summary and (run / CONFIG).is_file():
        import yaml

        try:
            cfg = yaml.safe_load((run / CONFIG).read_text()) or {}
        except yaml.YAMLError:
            cfg = {}
        method = (cfg.get("method") or {}).get("name")
        model = (cfg.get("model") or {}).get("name_or_path")
    rows = read_metric_rows(run / METRICS)
    steps = summary.get("steps") or (rows[-1].get("step") if rows else None)
    return [
        run.name,
        status(run, alive),
        recipe or "-",
        method or "-",
        Path(str(model)).name if model else "-",
        _pct(summary.get("before")),
        _pct(summary.get("after")),
        str(steps if steps is not None else "-"),
        _duration(summary.get("wall_seconds")),
    ]


def curves(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Per plotted metric, its (step, value) points in the order logged."""
    out: dict[str, list[tuple[int, float]]] = {k: [] for k in CURVES}
    for r in rows:
        for k in CURVES:
            v = r.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and "step" in r:
                out[k].append((int(r["step"]), float(v)))
    return out


def tail(path: Path, max_chars: int = 20_000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-max_chars:]


def images(run: Path) -> list[Path]:
    """PNGs the run wrote: plots/ and eval charts."""
    return sorted([*(run / "plots").glob("*.png"), *(run / "eval").glob("**/*.png")])


def checkpoints_and_guards(run: Path) -> str:
    """One markdown line: the run's saved checkpoints (resumable ones) and its guard counts from the last metrics row
    (non-finite steps skipped) and the console (gradient-norm spikes warned of)."""
    ckpts = sorted(
        (p.parent.name for p in (run / "checkpoints").glob("step-*/position.json")), key=lambda n: int(n[5:])
    )
    rows = read_metric_rows(run / METRICS)
    bad = rows[-1].get("bad_steps", 0) if rows else 0
    spikes = tail(run / CONSOLE, 10**7).count("gradient-norm spike")
    shown = ", ".join(ckpts[-5:]) + (f" (+{len(ckpts) - 5} older)" if len(ckpts) > 5 else "")
    return f"**checkpoints** {shown or 'none'} · **skipped non-finite steps** {bad} · **spike warnings** {spikes}"
