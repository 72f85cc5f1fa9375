"""`thinktune ui`: the web interface (Gradio) to configure, launch, watch, compare and chat with runs.

thinktune ui --runs-dir runs --port 7860
thinktune ui --host 0.0.0.0 --auth admin:secret     # reachable from other machines: needs a login
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from thinktune.cli.app import app, console, user_errors
from thinktune.errors import EnvironmentProblem


@app.command()
@user_errors
def ui(
    runs_dir: Annotated[Path, typer.Option(help="The runs directory the UI lists, launches into and reads.")] = Path(
        "runs"
    ),
    data_root: Annotated[
        list[Path] | None,
        typer.Option(help="A folder (repeatable) whose configs, data and models the UI may also read."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; other than loopback needs --auth.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 7860,
    auth: Annotated[str | None, typer.Option(help="USER:PASSWORD login (required off loopback).")] = None,
) -> None:
    """Open the web interface: Runs (status, live curves, console, plots), Launch (a form of every config setting;
    train, dpo, grpo), Chat (base vs a run side by side) and Compare (eval --compare over chosen runs).

    Example: `thinktune ui --runs-dir runs` then open http://127.0.0.1:7860
    """
    import importlib.util

    from thinktune.ui.app import UIState, check_host, serve_ui

    pair = check_host(host, auth)
    if importlib.util.find_spec("gradio") is None:
        raise EnvironmentProblem("thinktune ui needs Gradio: pip install 'thinktune[ui]'")
    runs_dir.mkdir(parents=True, exist_ok=True)
    state = UIState(runs_dir, list(data_root or []))
    console.print(f"thinktune ui on http://{host}:{port} (runs: {state.runs_dir}); Ctrl-C to stop")
    try:
        serve_ui(state, host, port, pair)
    finally:
        state.jobs.stop_all()
