"""`thinktune eval`: evaluate one model, or compare several."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from thinktune.cli.app import (
    ConfigOpt,
    OfflineOpt,
    OutOpt,
    RagIndexOpt,
    RagKOpt,
    SetOpt,
    app,
    build_config,
    console,
    user_errors,
    with_rag,
)
from thinktune.runs import EVAL, open_run


@app.command("eval")
@user_errors
def eval_(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    output_dir: OutOpt = None,
    model: Annotated[str | None, typer.Option(help="Model: bundled name, HF directory or .gguf.")] = None,
    adapter: Annotated[
        Path | None, typer.Option(help="What a run trained: its adapter/ or model/ folder, or the run directory.")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="A training run: its config (model, data) and what it trained.")
    ] = None,
    data: Annotated[str | None, typer.Option(help="Task file (JSON/JSONL) with reference answers.")] = None,
    max_samples: Annotated[int | None, typer.Option(help="Evaluate only the first N tasks.")] = None,
    compare: Annotated[
        list[str] | None,
        typer.Option(help="Compare candidates on the same set: `base`, an adapter dir, or another model (repeat)."),
    ] = None,
    metrics: Annotated[
        str | None, typer.Option(help="Extra text metrics, comma-separated: bleu,chrf,rouge,exact_match,token_f1,...")
    ] = None,
    num_samples: Annotated[int | None, typer.Option(help="Samples per prompt for pass@k / maj@k.")] = None,
    robustness: Annotated[bool, typer.Option(help="Also measure the accuracy drop on perturbed prompts.")] = False,
    efficiency: Annotated[bool, typer.Option(help="Also measure TTFT, latency p50/p95/p99, tokens/s, memory.")] = False,
    lm_eval_tasks: Annotated[
        str | None, typer.Option(help="lm-evaluation-harness tasks (comma-separated), datasets available locally.")
    ] = None,
    lm_eval_include: Annotated[Path | None, typer.Option(help="Directory of extra lm-eval task YAMLs.")] = None,
    rag_index: RagIndexOpt = None,
    rag_k: RagKOpt = None,
    lm_eval_chat: Annotated[
        str | None,
        typer.Option(help="lm-eval prompts: on (chat template), off (raw, base models), auto (eval.lm_eval_chat)."),
    ] = None,
    offline: OfflineOpt = False,
) -> None:
    """Evaluate a model (and optional adapter): accuracy, format compliance, think length, held-out loss.

    Example: `thinktune eval --adapter runs/quickstart/adapter --output-dir runs/quickstart/eval2`

    A run: `thinktune eval --run-dir runs/quickstart -o runs/quickstart/eval2` (any method: adapter, freeze, ESFT, full)

    Compare: `thinktune eval --compare base --compare runs/quickstart/adapter -o runs/compare`

    With retrieval: `thinktune eval --run-dir runs/contracts --rag-index runs/contracts-index` adds retrieval
    recall@k and citation coverage (records' `gold_ids`) to the headline.
    """
    sets = list(set_ or [])
    if run_dir is not None:
        run = open_run(run_dir)
        config = config or run.config
        adapter = adapter or run.path
        sets.insert(0, f"output_dir={run.path}")
    sets += [f"model.name_or_path={model}"] if model else []
    sets += [f"data.test={data}"] if data else []
    sets += [f"eval.max_samples={max_samples}"] if max_samples else []
    sets += [f"eval.metrics=[{metrics}]"] if metrics else []
    sets += [f"eval.num_samples={num_samples}"] if num_samples else []
    sets += [f"eval.lm_eval_chat={lm_eval_chat}"] if lm_eval_chat else []
    cfg = with_rag(build_config(config, sets), rag_index, rag_k)
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
    from thinktune.eval.job import EvalExtras, run_eval_job

    out = output_dir or (cfg.run_dir / EVAL)
    extras = EvalExtras(
        robustness=robustness,
        efficiency=efficiency,
        lm_eval_tasks=[t.strip() for t in lm_eval_tasks.split(",") if t.strip()] if lm_eval_tasks else [],
        lm_eval_include=str(lm_eval_include) if lm_eval_include else None,
    )
    r, more = run_eval_job(cfg, str(adapter) if adapter else None, out, console, extras)
    if r is not None:
        table = Table(title="evaluation")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in r.headline().items():
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
        console.print(table)
    for section, values in more.items():
        console.print(f"[bold]{section}[/]: {values}", highlight=False)
    console.print(f"report: {out / 'report.md'}, {out / 'report.json'}")
