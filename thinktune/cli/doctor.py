"""`thinktune doctor`: environment checks."""

from __future__ import annotations

import typer
from rich.table import Table

from thinktune.cli.app import app, console


@app.command()
def doctor() -> None:
    """Check versions, hardware and the bundled model; print a fix for each problem.

    Example: `thinktune doctor`
    """
    from thinktune.doctor import run_checks

    checks = run_checks()
    table = Table(title="thinktune doctor")
    for col in ("check", "value", "status"):
        table.add_column(col)
    for c in checks:
        table.add_row(c.name, c.value, "[green]ok[/]" if c.ok else "[red]problem[/]")
    console.print(table)
    problems = [c for c in checks if not c.ok]
    for c in problems:
        console.print(f"[red]✗[/] {c.name}: fix with `{c.fix}`", highlight=False)
    if problems:
        raise typer.Exit(1)
