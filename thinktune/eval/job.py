"""`thinktune eval`: evaluate any model (+ optional adapter) on a task file, writing JSON + markdown reports.

thinktune eval                                         # bundled SmolLM2 on the bundled test split
thinktune eval --adapter runs/quickstart/adapter --output-dir runs/quickstart/eval-again
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from thinktune.config import RunConfig
from thinktune.data.reading import check_bad_fraction
from thinktune.errors import UserError
from thinktune.eval.report import write_report
from thinktune.eval.runner import EvalResult, evaluate
from thinktune.eval.tasks import load_tasks
from thinktune.models import load_pretrained
from thinktune.models.vision import load_vision
from thinktune.progress import status, task_progress
from thinktune.runs import load_trained


@dataclass
class EvalExtras:
    """Optional parts of `thinktune eval` beyond accuracy: robustness, efficiency, lm-eval-harness tasks."""

    robustness: bool = False
    efficiency: bool = False
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_include: str | None = None


def run_eval_job(
    cfg: RunConfig, adapter: str | None, out_dir: Path, console: Console, extras: EvalExtras | None = None
) -> tuple[EvalResult, dict]:
    extras = extras or EvalExtras()
    if not cfg.data.test and not extras.lm_eval_tasks:
        raise UserError("no evaluation data: set data.test or pass --data FILE")
    loaded = load_tasks(cfg.data.test, cfg.data.format, cfg.eval.max_samples, cfg.data.rag) if cfg.data.test else None
    if loaded is not None:
        check_bad_fraction(loaded, cfg.data.max_bad_fraction, cfg.data.test)
    with status(console, f"loading {cfg.model.name_or_path}"):
        model, tokenizer, source = load_pretrained(cfg.model)
        vision = load_vision(model, source.path)  # None for a text-only model
        if adapter:
            model = load_trained(model, adapter)  # an adapter/ or model/ folder, or a run directory
    result, more = None, {}
    if loaded is not None:
        with task_progress(console, "eval") as bar:
            task = bar.add_task("eval", total=len(loaded.records))
            result = evaluate(
                model,
                tokenizer,
                loaded.records,
                cfg.eval,
                cfg.data.system_prompt,
                progress=lambda n: bar.advance(task, n),
                thinking=cfg.data.thinking,
                vision=vision,
            )
        if extras.robustness:
            from thinktune.eval.robustness import robustness_report

            with status(console, "robustness: perturbed prompts"):
                more["robustness"] = robustness_report(
                    model, tokenizer, loaded.records, cfg.eval, cfg.data.system_prompt
                )
        if extras.efficiency:
            from thinktune.data.render import render_prompt
            from thinktune.eval.efficiency import measure_efficiency

            prompts = [render_prompt(tokenizer, t["prompt"], cfg.data.system_prompt) for t in loaded.records[:16]]
            with status(console, "efficiency: latency and throughput at batch 1 and N"):
                more["efficiency"] = measure_efficiency(model, tokenizer, prompts, cfg.eval.max_new_tokens)
    if extras.lm_eval_tasks:
        from thinktune.eval.lm_eval_bridge import run_lm_eval

        with status(console, f"lm-eval-harness: {', '.join(extras.lm_eval_tasks)}"):
            more["lm_eval"] = run_lm_eval(
                model,
                tokenizer,
                extras.lm_eval_tasks,
                extras.lm_eval_include,
                limit=cfg.eval.max_samples,
                chat={"auto": None, "on": True, "off": False}[cfg.eval.lm_eval_chat],
                system_prompt=cfg.data.system_prompt,
                thinking=cfg.data.thinking,
                samples_path=out_dir / "lm_eval_samples.jsonl",
            )
    title = f"{cfg.model.name_or_path}" + (f" + {adapter}" if adapter else "")
    if result is not None:
        write_report(result, out_dir, "report", title, more)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").write_text(json.dumps(more, indent=1))
    return result, more
