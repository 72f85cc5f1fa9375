"""The `thinktune` command line: thin typer commands that build a RunConfig and call one function each.

thinktune train                       # the quickstart job
thinktune --help
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from thinktune.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="Fine-tune reasoning LLMs end to end: data → LoRA → evaluation.",
)
data_app = typer.Typer(no_args_is_help=True, help="Inspect and check datasets.")
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (default: the quickstart).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key: --set train.learning_rate=1e-4")]
OutOpt = Annotated[Path | None, typer.Option("--output-dir", "-o", help="Where to write results.")]


def _offline(value: bool) -> bool:
    if value:
        from thinktune.hub import go_offline

        go_offline()
    return value


# An environment switch, not a config field: whether this machine may download is a fact about the machine, not
# about the run (a run's config.yaml copied elsewhere must not stay offline); it also reaches torchrun workers.
OfflineOpt = Annotated[
    bool,
    typer.Option(
        "--offline",
        callback=_offline,
        help="Read Hub models and datasets (org/name, hf:org/name) only from the local HF cache (HF_HUB_OFFLINE=1).",
    ),
]


RagIndexOpt = Annotated[
    Path | None,
    typer.Option(
        "--rag-index",
        help="Retrieve passages from this index (thinktune rag index) for each question (data.rag.index).",
    ),
]
RagKOpt = Annotated[int | None, typer.Option("--rag-k", help="Passages per question (data.rag.k, default 4).")]


def with_rag(cfg, index: Path | None, k: int | None):
    """The config with `--rag-index` / `--rag-k` in data.rag (a run's own data.rag keeps its other settings)."""
    from thinktune.config import RagConfig
    from thinktune.errors import ConfigError

    if index is None and k is None:
        return cfg
    if index is None and cfg.data.rag is None:
        raise ConfigError("--rag-k needs a rag index: give --rag-index INDEX (or data.rag.index)")
    if k is not None and k < 1:
        raise ConfigError(f"--rag-k {k}: give at least 1")
    current = cfg.data.rag.model_dump() if cfg.data.rag else {}
    update = {**({"index": str(index)} if index is not None else {}), **({"k": k} if k is not None else {})}
    rag = RagConfig.model_validate({**current, **update})
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"rag": rag})})


def user_errors(fn):
    """UserError → one line on stderr and its exit code (2; 1 for a failed check); no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            # escaped: messages name pip extras such as thinktune[wandb], which rich would take for markup
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def build_config(config: Path | None, overrides: list[str] | None, output_dir: Path | None = None):
    from thinktune.config import load_config

    sets = list(overrides or [])
    if output_dir is not None:
        sets.append(f"output_dir={output_dir}")
    return load_config(config, sets)
