"""`thinktune data ...`: dataset commands."""

from __future__ import annotations

from typing import Annotated

import typer

from thinktune.cli.app import console, data_app, user_errors
from thinktune.errors import UserError


@data_app.command("validate")
@user_errors
def data_validate(
    files: Annotated[list[str], typer.Argument(help="JSON/JSONL files, or bundled:NAME.")],
    format_: Annotated[str, typer.Option("--format", help="auto, messages, alpaca or sharegpt.")] = "auto",
) -> None:
    """Check that every record of each file is usable; list the bad ones with file, line and reason.

    Example: `thinktune data validate my_train.jsonl --format sharegpt`  (exit code 1 when any record is bad)
    """
    from thinktune.data.formats import FORMATS
    from thinktune.data.reading import read_records

    if format_ != "auto" and format_ not in FORMATS:
        raise UserError(f"--format {format_}: unknown format (choose from auto, {', '.join(FORMATS)})")
    bad = 0
    for f in files:
        loaded = read_records(f, format_)
        bad += len(loaded.rejects)
        with_reasoning = sum(any(m["reasoning"] for m in r["messages"]) for r in loaded.records)
        console.print(
            f"{f}: {len(loaded.records)} usable, {len(loaded.rejects)} rejected, {with_reasoning} with reasoning"
        )
        for r in loaded.rejects:
            console.print(f"  {r.file}:{r.line}: {r.reason}", highlight=False)
    if bad:
        raise typer.Exit(1)
