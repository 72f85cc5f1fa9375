"""The `thinktune` command line: thin typer commands that build a RunConfig and call one function each.

thinktune train                       # the quickstart job
thinktune --help
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

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


def user_errors(fn):
    """UserError → one line on stderr and exit code 2; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
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


@app.command()
@user_errors
def train(config: ConfigOpt = None, set_: SetOpt = None, output_dir: OutOpt = None) -> None:
    """Evaluate, fine-tune and re-evaluate a model; everything lands in the run directory.

    Example: `thinktune train --config examples/quickstart.yaml --set train.learning_rate=5e-4 -o runs/try1`
    """
    cfg = build_config(config, set_, output_dir)  # config errors show before torch is imported
    from thinktune.train.sft import run_sft

    summary = run_sft(cfg, console)
    print_summary(summary)


def print_summary(s: dict) -> None:
    table = Table(title="thinktune run", show_lines=False)
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    b, a = s.get("before") or {}, s.get("after") or {}
    fmt = lambda d, k: f"{d[k]:.1%}" if k in d else "-"  # noqa: E731
    table.add_row("accuracy", fmt(b, "accuracy"), fmt(a, "accuracy"))
    table.add_row("format compliance", fmt(b, "format_compliance"), fmt(a, "format_compliance"))
    loss = lambda d: f"{d['loss']:.3f}" if d.get("loss") is not None else "-"  # noqa: E731
    table.add_row("held-out loss", loss(b), loss(a))
    console.print(table)
    console.print(
        f"wall time {s['wall_seconds']:.0f}s · training {s['train_seconds']:.0f}s at "
        f"{s['train_tokens_per_second']:.0f} tokens/s · {s['steps']} steps"
    )
    console.print(
        f"run directory: [bold]{s['run_dir']}[/] (adapter: {s['adapter_dir']}, summary.json, "
        f"metrics.jsonl, plots/, eval/, rejects.jsonl)"
    )


@app.command("eval")
@user_errors
def eval_(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    output_dir: OutOpt = None,
    model: Annotated[str | None, typer.Option(help="Model: bundled name, HF directory or .gguf.")] = None,
    adapter: Annotated[Path | None, typer.Option(help="PEFT adapter directory to apply.")] = None,
    data: Annotated[str | None, typer.Option(help="Task file (JSON/JSONL) with reference answers.")] = None,
    max_samples: Annotated[int | None, typer.Option(help="Evaluate only the first N tasks.")] = None,
    compare: Annotated[
        list[str] | None,
        typer.Option(help="Compare candidates on the same set: `base`, an adapter dir, or another model (repeat)."),
    ] = None,
) -> None:
    """Evaluate a model (and optional adapter): accuracy, format compliance, think length, held-out loss.

    Example: `thinktune eval --adapter runs/quickstart/adapter --output-dir runs/quickstart/eval2`

    Compare: `thinktune eval --compare base --compare runs/quickstart/adapter -o runs/compare`
    """
    sets = list(set_ or [])
    sets += [f"model.name_or_path={model}"] if model else []
    sets += [f"data.test={data}"] if data else []
    sets += [f"eval.max_samples={max_samples}"] if max_samples else []
    cfg = build_config(config, sets)
    if compare:
        from thinktune.eval.compare import TABLE, compare_models

        out = output_dir or Path("runs") / "compare"
        results = compare_models(cfg, compare, out, console)
        table = Table(title=f"comparison on {cfg.data.test}")
        table.add_column("model")
        for k in TABLE:
            table.add_column(k.replace("_", " "), justify="right")
        for label, r in results.items():
            h = r.headline()
            table.add_row(label, *[f"{h[k]:.3f}" if isinstance(h[k], float) else "-" for k in TABLE])
        console.print(table)
        console.print(f"report: {out / 'report.md'}, {out / 'report.json'}, {out / 'charts'}")
        return
    from thinktune.eval.job import run_eval_job

    out = output_dir or (cfg.run_dir / "eval")
    r = run_eval_job(cfg, str(adapter) if adapter else None, out, console)
    console.print(
        f"accuracy {r.accuracy:.1%} · format compliance {r.format_compliance:.1%} · "
        f"mean think tokens {r.mean_think_tokens:.1f} · loss {r.loss if r.loss is None else round(r.loss, 4)}"
        f" · n={r.n} · {r.seconds:.0f}s"
    )
    console.print(f"report: {out / 'report.md'}, {out / 'report.json'}")


@app.command()
@user_errors
def chat(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    model: Annotated[str | None, typer.Option(help="Model: bundled name, HF directory or .gguf.")] = None,
    adapter: Annotated[Path | None, typer.Option(help="PEFT adapter directory to apply.")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Ask once and exit.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length limit.")] = 256,
) -> None:
    """Talk to a model: interactive, or one-shot with --prompt. Thinking is shown dimmed.

    Example: `thinktune chat --adapter runs/quickstart/adapter -p "Ana has 3 bags of 4 apples. How many apples?"`
    """
    from thinktune.eval.job import load_adapter
    from thinktune.models import load_pretrained
    from thinktune.serve.chat import ChatSession

    cfg = build_config(config, (set_ or []) + ([f"model.name_or_path={model}"] if model else []))
    with console.status(f"loading {cfg.model.name_or_path}"):
        m, tok, _ = load_pretrained(cfg.model)
        if adapter:
            m = load_adapter(m, adapter)
    session = ChatSession(m, tok, cfg.data.system_prompt, max_new_tokens)

    def answer(text: str) -> None:
        thinking, reply = session.ask(text)
        if thinking:
            console.print(f"[dim]<think>\n{thinking}\n</think>[/]", highlight=False)
        console.print(reply, highlight=False)

    if prompt is not None:
        answer(prompt)
        return
    console.print("chat with the model; empty line or Ctrl-D to quit")
    while True:
        try:
            text = console.input("[bold]> [/]")
        except EOFError:
            break
        if not text.strip():
            break
        answer(text)


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


def main() -> None:
    app(prog_name="thinktune")


if __name__ == "__main__":
    sys.exit(main())
