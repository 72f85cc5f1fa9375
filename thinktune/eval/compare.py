"""`thinktune eval --compare`: the same task set over a base model and adapters / other models, side by side.

    thinktune eval --compare base --compare runs/quickstart/adapter -o runs/compare

Each candidate is `base` (the configured model), what a run trained (its adapter/ or model/ folder, or the run
directory: applied to the configured model), or any model reference (merged model directory, .gguf). Writes
report.md, report.json and charts/*.png; every candidate after the first is also compared with the first task by
task (Δaccuracy, 95% interval, McNemar p: significance.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from thinktune.config import RunConfig
from thinktune.data.reading import check_bad_fraction
from thinktune.errors import UserError
from thinktune.eval.charts import metric_bars, think_length_histogram
from thinktune.eval.runner import EvalResult, evaluate
from thinktune.eval.significance import paired_from_samples
from thinktune.eval.tasks import load_tasks
from thinktune.models import load_pretrained
from thinktune.models.vision import load_vision
from thinktune.progress import status, task_progress
from thinktune.runs import ADAPTER, MODEL, find_trained, load_trained

TABLE = ("accuracy", "format_compliance", "mean_think_tokens", "mean_output_tokens", "loss", "perplexity", "seconds")


def candidate_label(ref: str) -> str:
    if ref == "base":
        return "base"
    p = Path(ref)
    return f"{p.parent.name}/{p.name}" if p.name in (ADAPTER, MODEL) else p.name


def load_candidate(cfg: RunConfig, ref: str):
    """(model, tokenizer, vision) of a candidate: the base, an adapter or changed tensors on it, or a full model."""
    trained = None if ref == "base" else find_trained(ref)
    if ref == "base" or (trained is not None and trained.kind != "full"):  # the base, or an adapter / tensors on it
        model, tok, source = load_pretrained(cfg.model)
        if trained is not None:
            model = load_trained(model, trained.path)
    else:
        ref = str(trained.path) if trained is not None else ref  # a full model (or a run that saved one)
        other = cfg.model.model_copy(update={"name_or_path": ref, "gguf_file": None, "revision": None})
        model, tok, source = load_pretrained(other)
    return model, tok, load_vision(model, source.path)


def compare_models(cfg: RunConfig, candidates: list[str], out_dir: Path, console: Console) -> dict[str, EvalResult]:
    if len(candidates) < 2:
        raise UserError("--compare needs at least two candidates, e.g. --compare base --compare runs/x/adapter")
    if not cfg.data.test:
        raise UserError("no evaluation data: set data.test or pass --data FILE")
    loaded = load_tasks(cfg.data.test, cfg.data.format, cfg.eval.max_samples, cfg.data.rag)
    check_bad_fraction(loaded, cfg.data.max_bad_fraction, cfg.data.test)
    results: dict[str, EvalResult] = {}
    for ref in candidates:
        label = candidate_label(ref)
        if label in results:
            label = ref
        with status(console, f"loading {label}"):
            model, tok, vision = load_candidate(cfg, ref)
        with task_progress(console, f"eval {label}") as bar:
            task = bar.add_task(label, total=len(loaded.records))
            advance = lambda n, t=task: bar.advance(t, n)  # noqa: E731
            results[label] = evaluate(
                model,
                tok,
                loaded.records,
                cfg.eval,
                cfg.data.system_prompt,
                progress=advance,
                thinking=cfg.data.thinking,
                vision=vision,
            )
        del model
    write_comparison(results, candidates, cfg, out_dir)
    return results


def write_comparison(results: dict[str, EvalResult], candidates: list[str], cfg: RunConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = [
        metric_bars(results, out_dir / "charts" / "metrics.png"),
        think_length_histogram(results, out_dir / "charts" / "think_length.png"),
    ]
    labels = list(results)
    first = results[labels[0]]
    paired = {k: paired_from_samples(first.samples, results[k].samples) for k in labels[1:]}
    payload = {
        "data": cfg.data.test,
        "candidates": dict(zip(results, candidates, strict=True)),
        "results": {k: r.headline() for k, r in results.items()},
        "paired_against": {"reference": labels[0], **{k: v for k, v in paired.items() if v}},
        "samples": {k: r.samples for k, r in results.items()},
    }
    (out_dir / "report.json").write_text(json.dumps(payload, indent=1, ensure_ascii=False))
    lines = [
        f"# Comparison on {cfg.data.test} ({next(iter(results.values())).n} tasks)",
        "",
        "| model | " + " | ".join(TABLE) + " |",
        "|---" * (len(TABLE) + 1) + "|",
    ]
    for label, r in results.items():
        h = r.headline()
        cells = [_fmt(h[k]) for k in TABLE]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if any(paired.values()):
        lines += [
            "",
            f"## Paired against {labels[0]} (same tasks; McNemar's exact test)",
            "",
            "| model | Δ accuracy | 95% CI | gained | lost | p |",
            "|---|---|---|---|---|---|",
        ]
        for k, v in paired.items():
            if v:
                lo, hi = v["ci95"]
                lines.append(
                    f"| {k} | {100 * v['difference']:+.1f} pts | {100 * lo:+.1f} … {100 * hi:+.1f} | "
                    f"{v['gained']} | {v['lost']} | {v['p_value']:.3g} |"
                )
    lines += ["", *[f"![{c.stem}](charts/{c.name})" for c in charts], "", "## Where they disagree", ""]
    shown = 0
    for i in range(next(iter(results.values())).n):
        verdicts = [results[k].samples[i]["correct"] for k in labels]
        if len(set(verdicts)) > 1 and shown < 5:
            s0 = results[labels[0]].samples[i]
            lines.append(f"**Q:** {s0['prompt']} (reference `{s0['answer']}`)")
            for k in labels:
                s = results[k].samples[i]
                lines.append(f"- {k}: `{s['predicted']}` ({'correct' if s['correct'] else 'wrong'})")
            lines.append("")
            shown += 1
    (out_dir / "report.md").write_text("\n".join(lines))


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)
