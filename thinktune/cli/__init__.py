"""The `thinktune` command line: thin typer commands that build a RunConfig and call one function each.

    thinktune train                       # the quickstart job
    thinktune --help

One module per command group registers its commands on the shared app (cli/app.py).
"""

from thinktune.cli import chat, data, doctor, evaluate, experts, export, plan, rag, rl, serve, train, ui  # noqa: F401  (registers commands)
from thinktune.cli.app import app


def main() -> None:
    app(prog_name="thinktune")
