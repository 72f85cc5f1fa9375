"""`thinktune eval`: evaluate one model, or compare several."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from thinktune.cli.app import ConfigOpt, OutOpt, SetOpt, app, build_config, console, user_errors


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
