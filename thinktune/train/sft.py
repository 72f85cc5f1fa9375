"""Supervised fine-tuning recipe: evaluate → tune → evaluate, writing everything to the run directory.

    thinktune train                                   # quickstart: bundled SmolLM2 on the bundled arithmetic task
    thinktune train --config examples/qwen3-8b-lora.yaml --set train.learning_rate=1e-4
    accelerate launch -m thinktune train --config my.yaml   # several processes / GPUs

Reads top to bottom: setup() loads model, tokenizer and data; evaluate before; train(); save(); evaluate after;
summary.json. The loop is plain PyTorch on Accelerate (devices, mixed precision, gradient accumulation, DDP).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console
from torch.utils.data import DataLoader

from thinktune.config import RunConfig, to_yaml
from thinktune.data.collate import pad_batch
from thinktune.data.prepare import TrainingData, prepare_training_data
from thinktune.data.reading import check_bad_fraction, write_rejects
from thinktune.errors import EnvironmentProblem
from thinktune.eval.report import write_report
from thinktune.eval.runner import EvalResult, evaluate
from thinktune.eval.tasks import load_tasks
from thinktune.methods import (
    MethodContext,
    apply_method,
    count_parameters,
    on_optimizer_step,
    optimizer_parameters,
    save_trained,
)
from thinktune.models import load_pretrained
from thinktune.train.engine.loggers import MetricsLog
from thinktune.train.engine.optim import build_optimizer, build_scheduler, total_optimizer_steps
from thinktune.train.engine.plots import plot_metrics
from thinktune.train.engine.progress import task_progress, training_progress


@dataclass
class Run:
    cfg: RunConfig
    dir: Path
    accelerator: Accelerator
    console: Console
    model: Any = None
    tokenizer: Any = None
    data: TrainingData | None = None
    tasks: list[dict] | None = None


def mixed_precision(choice: str) -> str:
    cuda = torch.cuda.is_available()
    if choice == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if choice == "fp16" and not cuda:
        raise EnvironmentProblem("train.mixed_precision=fp16 needs a CUDA GPU; use 'no' or 'bf16' on CPU")
    return choice


def setup(cfg: RunConfig, console: Console) -> Run:
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    acc = Accelerator(
        mixed_precision=mixed_precision(cfg.train.mixed_precision),
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
    )
    run = Run(cfg, cfg.run_dir, acc, console)
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / "config.yaml").write_text(to_yaml(cfg))
    set_seed(cfg.train.seed)

    with console.status(f"loading model {cfg.model.name_or_path} (first use of a GGUF converts it once)"):
        t = time.perf_counter()
        run.model, run.tokenizer, source = load_pretrained(cfg.model)
    console.print(
        f"model [bold]{source.description}[/] ({run.model.config.model_type}, "
        f"{sum(p.numel() for p in run.model.parameters()) / 1e6:.1f}M params) in {time.perf_counter() - t:.1f}s"
    )

    run.data = prepare_training_data(cfg.data, run.tokenizer)
    rejects = list(run.data.rejects)
    if cfg.data.test:
        loaded = load_tasks(cfg.data.test, cfg.data.format, cfg.eval.max_samples)
        check_bad_fraction(loaded, cfg.data.max_bad_fraction, "test data")
        run.tasks, rejects = loaded.records, rejects + loaded.rejects
    write_rejects(rejects, run.dir / "rejects.jsonl")
    console.print(
        f"data: {len(run.data.samples)} training samples from {run.data.total_records} records, "
        f"{len(run.tasks or [])} test tasks, {len(rejects)} rejected (→ rejects.jsonl)"
    )
    return run


def run_eval(run: Run, label: str) -> EvalResult | None:
    if not run.tasks or not run.accelerator.is_main_process:
        return None
    model = run.accelerator.unwrap_model(run.model)
    with task_progress(run.console, f"eval {label}") as bar:
        task = bar.add_task(label, total=len(run.tasks))
        result = evaluate(
            model,
            run.tokenizer,
            run.tasks,
            run.cfg.eval,
            run.cfg.data.system_prompt,
            progress=lambda n: bar.advance(task, n),
        )
    write_report(result, run.dir / "eval", label, f"{label}: {run.cfg.model.name_or_path}")
    run.console.print(
        f"eval {label}: accuracy {result.accuracy:.1%}, format {result.format_compliance:.1%}, "
        f"loss {result.loss:.3f} ({result.seconds:.0f}s)"
    )
    return result


def train(run: Run) -> dict[str, float]:
    cfg, acc = run.cfg.train, run.accelerator
    run.model = apply_method(run.model, run.cfg.method, MethodContext(run.tokenizer, run.data.samples))
    trainable, total = count_parameters(run.model)
    run.console.print(
        f"method {run.cfg.method.name}: {trainable:,} trainable of {total:,} parameters ({trainable / total:.2%})"
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        run.data.samples,
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=lambda s: pad_batch(s, run.tokenizer.pad_token_id),
    )
    steps = total_optimizer_steps(cfg, len(loader))
    optimizer = build_optimizer(optimizer_parameters(run.model, run.cfg.method), cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    run.model, optimizer, loader, scheduler = acc.prepare(run.model, optimizer, loader, scheduler)
    log = MetricsLog(run.dir) if acc.is_main_process else None

    run.model.train()
    step, tokens, window_tokens, losses = 0, 0, 0, []
    start = window_start = time.perf_counter()
    with training_progress(run.console) as bar:
        task = bar.add_task("train", total=steps, loss=math.nan, lr=cfg.learning_rate, tps=0.0)
        while step < steps:
            for batch in loader:
                with acc.accumulate(run.model):
                    loss = run.model(**batch).loss
                    acc.backward(loss)
                    grad_norm = None
                    if acc.sync_gradients and cfg.max_grad_norm:
                        grad_norm = float(acc.clip_grad_norm_(run.model.parameters(), cfg.max_grad_norm))
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                n = int(batch["attention_mask"].sum())
                tokens += n
                window_tokens += n
                losses.append(loss.detach().item())
                if not acc.sync_gradients:
                    continue
                step += 1
                on_optimizer_step(acc.unwrap_model(run.model), run.cfg.method, step)
                now = time.perf_counter()
                tps = window_tokens / max(now - window_start, 1e-9)
                mean_loss = sum(losses) / len(losses)
                lr = scheduler.get_last_lr()[0]
                bar.update(task, advance=1, loss=mean_loss, lr=lr, tps=tps)
                if log and step % cfg.logging_steps == 0:
                    log.log(
                        step,
                        {
                            "loss": mean_loss,
                            "lr": lr,
                            "grad_norm": grad_norm,
                            "tokens_per_second": tps,
                            "tokens": tokens,
                            "epoch": step / max(1, len(loader) / cfg.gradient_accumulation_steps),
                        },
                    )
                losses, window_tokens, window_start = [], 0, now
                if step >= steps:
                    break
    elapsed = time.perf_counter() - start
    if log:
        log.close()
    return {
        "steps": step,
        "train_tokens": tokens,
        "train_seconds": elapsed,
        "train_tokens_per_second": tokens / max(elapsed, 1e-9),
        "final_loss": mean_loss,
    }


def save(run: Run) -> Path:
    adapter_dir = run.dir / "adapter"
    run.accelerator.wait_for_everyone()
    if run.accelerator.is_main_process:
        adapter_dir = save_trained(run.accelerator.unwrap_model(run.model), run.cfg.method, run.dir)
        run.tokenizer.save_pretrained(adapter_dir)
        plot_metrics(run.dir / "metrics.jsonl", run.dir / "plots")
    return adapter_dir


def run_sft(cfg: RunConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    wall_start = time.perf_counter()
    run = setup(cfg, console)
    before = run_eval(run, "before") if run.cfg.eval.before else None
    stats = train(run)
    adapter_dir = save(run)
    after = run_eval(run, "after") if run.cfg.eval.after else None
    summary = {
        "run_dir": str(run.dir),
        "adapter_dir": str(adapter_dir),
        "model": cfg.model.name_or_path,
        "method": cfg.method.name,
        "before": before.headline() if before else None,
        "after": after.headline() if after else None,
        "train_samples": len(run.data.samples),
        "rejected_records": len(run.data.rejects),
        **stats,
        "wall_seconds": time.perf_counter() - wall_start,
    }
    if run.accelerator.is_main_process:
        (run.dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
