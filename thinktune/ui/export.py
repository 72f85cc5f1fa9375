"""The UI's Export tab: `thinktune export --run-dir RUN --format F -o RUN/export/F`, run as the CLI runs it, and the
verification it wrote (`verify.json`) shown as a table; a failed export or verification shows the CLI's one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from thinktune.errors import UserError
from thinktune.export import EXPORTERS
from thinktune.runs import EXPORT

FORMATS = tuple(EXPORTERS)


def export_command(run: Path, fmt: str) -> tuple[list[str], Path]:
    """(argv, output folder) of one export of a run, into the run's own export/FORMAT/."""
    if fmt not in EXPORTERS:
        raise UserError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    out = run / EXPORT / fmt
    return [sys.executable, "-m", "thinktune", "export", "--run-dir", str(run), "--format", fmt, "-o", str(out)], out


def export_run(run: Path, fmt: str) -> tuple[str, dict[str, Any] | None]:
    """(markdown, verify.json record or None): the export's verification figures, or the CLI's error line."""
    args, out = export_command(run, fmt)
    proc = subprocess.run(
        args, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, stdin=subprocess.DEVNULL
    )
    verify = out / "verify.json"
    record = json.loads(verify.read_text()) if verify.is_file() and proc.returncode == 0 else None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return f"**{fmt} export failed:** {lines[-1] if lines else f'exit code {proc.returncode}'}", None
    return verify_table(fmt, out, record or {}), record


def verify_table(fmt: str, out: Path, record: dict[str, Any]) -> str:
    rows = [f"| {k.replace('_', ' ')} | {_cell(v)} |" for k, v in record.items() if _cell(v) is not None]
    return "\n".join([f"### {fmt}: `{out}`", "", "| verification | |", "|---|---|", *rows])


def _cell(value: Any) -> str | None:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bool | int | str):
        return str(value)
    return None  # nested figures stay in verify.json
