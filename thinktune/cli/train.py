"""`thinktune train`: evaluate → tune → evaluate."""

from __future__ import annotations

from rich.table import Table

from thinktune.cli.app import ConfigOpt, OutOpt, SetOpt, app, build_config, console, user_errors


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
