"""Supervised fine-tuning recipe: evaluate → tune → evaluate, writing everything to the run directory.

    thinktune train                                   # quickstart: bundled SmolLM2 on the bundled arithmetic task
    thinktune train --config examples/qwen3-8b-lora.yaml --set train.learning_rate=1e-4
    accelerate launch -m thinktune train --config my.yaml   # several processes / GPUs

Reads top to bottom: setup() loads model, tokenizer and data; evaluate before; train(); save(); evaluate after;
summary.json. The loop is plain PyTorch on Accelerate (devices, mixed precision, gradient accumulation, DDP).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console

from thinktune import runs
from thinktune.config import RunConfig, to_yaml
from thinktune.data.collate import pad_batch
from thinktune.data.prepare import TrainingData, prepare_training_data
from thinktune.data.reading import check_bad_fraction, write_rejects
from thinktune.errors import ConfigError, EnvironmentProblem
from thinktune.eval.report import write_report
from thinktune.eval.runner import EvalResult, evaluate, heldout_loss
from thinktune.eval.significance import paired_from_samples
from thinktune.eval.tasks import load_tasks
from thinktune.methods import (
    MethodContext,
    apply_method,
    check_method_environment,
    check_method_model,
    count_parameters,
    method_loss,
    on_optimizer_step,
    optimizer_parameters,
    save_trained,
)
from thinktune.models import load_pretrained
from thinktune.train.engine.checkpoint import resolve_resume
from thinktune.train.engine.ewc import EWCPenalty, compute_fisher, load_fisher, save_fisher
from thinktune.train.engine.loggers import MetricsLog, check_trackers
from thinktune.train.engine.loop import TrainLoop
from thinktune.train.engine.monitor import plot_update_heatmap
from thinktune.train.engine.optim import build_optimizer, build_scheduler, total_optimizer_steps
from thinktune.train.engine.plots import plot_metrics
from thinktune.train.engine.progress import task_progress
from thinktune.train.engine.sampler import batches_per_epoch
from thinktune.train.engine.speed import (
    apply_liger_kernels,
    build_make_batch,
    build_sft_loss_fn,
    check_speed_environment,
    compile_model,
    configure_threads,
)


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
    validation: list[dict] | None = None


def load_validation(cfg: RunConfig) -> tuple[list[dict] | None, list]:
    """data.validation's tasks and rejects; train.eval_steps / load_best_at_end without it is a config error."""
    if cfg.train.load_best_at_end and not cfg.train.eval_steps:
        raise ConfigError("train.load_best_at_end needs train.eval_steps (how often to validate)")
    if cfg.data.validation:
        loaded = load_tasks(cfg.data.validation, cfg.data.format, cfg.eval.max_samples)
        check_bad_fraction(loaded, cfg.data.max_bad_fraction, "validation data")
        return loaded.records, loaded.rejects
    if cfg.train.eval_steps:
        raise ConfigError("train.eval_steps needs data.validation (a file with reference answers)")
    return None, []


def mixed_precision(choice: str) -> str:
    cuda = torch.cuda.is_available()
    if choice == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if choice == "fp16" and not cuda:
        raise EnvironmentProblem("train.mixed_precision=fp16 needs a CUDA GPU; use 'no' or 'bf16' on CPU")
    return choice


def setup(cfg: RunConfig, console: Console) -> Run:
    configure_threads(cfg.train.num_threads)
    acc = Accelerator(
        cpu=not torch.cuda.is_available(),  # also what makes torchrun on CPU form a gloo process group
        mixed_precision=mixed_precision(cfg.train.mixed_precision),
    )
    if not acc.is_main_process:
        console = Console(quiet=True)  # one process talks
    run = Run(cfg, cfg.run_dir, acc, console)
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / runs.CONFIG).write_text(to_yaml(cfg))
    set_seed(cfg.train.seed)

    check_method_environment(cfg.method, cfg.train)  # before any weights load (qlora without CUDA, esft + decay)
    check_speed_environment(cfg.train)  # liger without CUDA
    check_trackers(cfg.train.report_to)  # a tracker's package missing: one line, before any weights load
    quantization = None
    if cfg.method.name == "qlora":
        from thinktune.methods.qlora import quantization_config

        quantization = quantization_config(cfg.method)  # load once, already 4-bit
    with console.status(f"loading model {cfg.model.name_or_path} (first use of a GGUF converts it once)"):
        t = time.perf_counter()
        run.model, run.tokenizer, source = load_pretrained(cfg.model, quantization)
    check_method_model(run.model, cfg.method)  # before the evaluation: ESFT on a dense model stops here
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
    run.validation, bad = load_validation(cfg)
    rejects += bad
    write_rejects(rejects, run.dir / "rejects.jsonl")
    console.print(
        f"data: {len(run.data.samples)} training samples from {run.data.total_records} records, "
        f"{len(run.tasks or [])} test tasks, {len(rejects)} rejected (→ rejects.jsonl)"
    )
    return run


def load_headline(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())["headline"]


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
            thinking=run.cfg.data.thinking,
        )
    write_report(result, run.dir / runs.EVAL, label, f"{label}: {run.cfg.model.name_or_path}")
    run.console.print(
        f"eval {label}: accuracy {result.accuracy:.1%}, format {result.format_compliance:.1%}, "
        f"loss {result.loss:.3f} ({result.seconds:.0f}s)"
    )
    return result


def paired_before_after(before: EvalResult | dict | None, after: EvalResult | None) -> dict[str, Any] | None:
    """Before vs after on the same held-out tasks: gained/lost, Δaccuracy with its 95% interval, McNemar p
    (eval/significance.py); None when either side has no per-task records (no eval, or a resumed run)."""
    if not isinstance(before, EvalResult) or after is None:
        return None
    return paired_from_samples(before.samples, after.samples)


def train(run: Run, resume: str | None = None) -> dict[str, Any]:
    cfg, acc = run.cfg.train, run.accelerator
    per_epoch = batches_per_epoch(len(run.data.samples), cfg.batch_size, acc.num_processes)
    steps = total_optimizer_steps(cfg, per_epoch)
    context = MethodContext(run.tokenizer, run.data.samples, total_steps=steps)
    apply_liger_kernels(run.model, cfg)  # before the method wraps the layers
    run.model = apply_method(run.model, run.cfg.method, context)
    if cfg.gradient_checkpointing:
        run.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(run.model, "enable_input_require_grads"):
            run.model.enable_input_require_grads()  # PEFT: frozen embeddings still need grads flowing through
    compile_model(run.model, cfg)  # after the method and checkpointing wrap the layers
    trainable, total = count_parameters(run.model)
    run.console.print(
        f"method {run.cfg.method.name}: {trainable:,} trainable of {total:,} parameters ({trainable / total:.2%})"
    )
    params = optimizer_parameters(run.model, run.cfg.method)
    optimizer = build_optimizer(params, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    # The scheduler is not prepared: Accelerate would step it once per process.
    run.model, optimizer = acc.prepare(run.model, optimizer)
    teacher = load_teacher(run) if cfg.teacher else None
    ewc = EWCPenalty(*load_fisher(cfg.ewc_fisher), cfg.ewc_lambda) if cfg.ewc_lambda and cfg.ewc_fisher else None

    sft_loss = build_sft_loss_fn(run.model, cfg, teacher, ewc, acc)  # speed levers: packing, chunked head

    def loss_fn(model, batch):
        loss, parts = sft_loss(model, batch)
        extra = method_loss(acc.unwrap_model(model), run.cfg.method)
        if extra is not None:  # AdaLoRA's orthogonality penalty
            loss = loss + extra
            parts["method"] = float(extra.detach())
        return loss, parts

    log = None
    if acc.is_main_process:
        log = MetricsLog(run.dir, cfg.report_to, cfg.mlflow_tracking_uri, run.cfg.name, flat_params(run.cfg))
    loop = TrainLoop(
        cfg=cfg,
        accelerator=acc,
        model=run.model,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        n_samples=len(run.data.samples),
        make_batch=build_make_batch(run.data.samples, cfg, run.tokenizer.pad_token_id),
        loss_fn=loss_fn,
        total_steps=steps,
        run_dir=run.dir,
        console=run.console,
        sample_weights=balanced_weights(run),
        validate=(lambda: validate(run)) if (cfg.eval_steps and run.validation) else None,
        after_step=lambda step: on_optimizer_step(acc.unwrap_model(run.model), run.cfg.method, step),
        log=log,
    )
    try:
        result = loop.run(resume)
    finally:
        if log:
            log.close()
    return {
        "steps": result.steps,
        "train_tokens": result.tokens,
        "train_seconds": result.seconds,
        "train_tokens_per_second": result.tokens / max(result.seconds, 1e-9),
        "final_loss": result.final_loss,
        "bad_steps": result.bad_steps,
        "spikes": result.spikes,
        "rollbacks": result.rollbacks,
        "stopped_early": result.stopped_early,
        "resumed_from": result.resumed_from,
        "validations": result.validations,
        "best_step": result.best_step,
    }


def balanced_weights(run: Run) -> list[float] | None:
    """Class-weighted sampling (data.balance_by): inverse frequency, or data.balance_weights shares."""
    if not run.cfg.data.balance_by:
        return None
    from thinktune.data.balance import sample_weights

    return sample_weights(run.data.records, run.cfg.data.balance_by, run.cfg.data.balance_weights)


def load_teacher(run: Run):
    """Teacher for logit distillation: any model reference thinktune can load, frozen, on the run's device."""
    teacher, _, _ = load_pretrained(
        run.cfg.model.model_copy(update={"name_or_path": run.cfg.train.teacher, "gguf_file": None})
    )
    teacher.eval().requires_grad_(False)
    return teacher.to(run.accelerator.device)


@torch.no_grad()
def validate(run: Run) -> dict[str, float]:
    """Validation loss on data.validation plus generation metrics (accuracy, format, eval.metrics) on its tasks."""
    model = run.accelerator.unwrap_model(run.model)
    values: dict[str, float] = {}
    loss = heldout_loss(model, run.tokenizer, run.validation, run.cfg.data.system_prompt, run.cfg.eval.batch_size)
    if loss is not None:
        values["val_loss"] = loss
    r = evaluate(
        model, run.tokenizer, run.validation, run.cfg.eval, run.cfg.data.system_prompt, thinking=run.cfg.data.thinking
    )
    values.update(accuracy=r.accuracy, format_compliance=r.format_compliance, **r.extra)
    return values


def flat_params(cfg: RunConfig) -> dict[str, Any]:
    flat = {}
    for section, values in cfg.model_dump(mode="json").items():
        if isinstance(values, dict):
            flat.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            flat[section] = values
    return flat


def save(run: Run) -> Path:
    adapter_dir = run.dir / runs.ADAPTER
    run.accelerator.wait_for_everyone()
    if run.accelerator.is_main_process:
        adapter_dir = save_trained(run.accelerator.unwrap_model(run.model), run.cfg.method, run.dir)
        run.tokenizer.save_pretrained(adapter_dir)
        if (adapter_dir / runs.PEFT_CONFIG).is_file():  # PEFT wrote the path the weights loaded from
            from thinktune.export.model_card import record_base_model

            record_base_model(adapter_dir, run.cfg.model.name_or_path)
        plot_metrics(run.dir / "metrics.jsonl", run.dir / "plots")
        plot_update_heatmap(run.dir / "metrics.jsonl", run.dir / "plots" / "update_heatmap.png")
        if run.cfg.train.save_fisher:
            save_run_fisher(run)
    return adapter_dir


def save_run_fisher(run: Run) -> None:
    """fisher.pt for a later run's EWC (train.ewc_fisher): Fisher of this task's loss at the tuned weights."""
    model = run.accelerator.unwrap_model(run.model)
    params = optimizer_parameters(model, run.cfg.method)
    batches = [
        {
            k: v.to(run.accelerator.device)
            for k, v in pad_batch(run.data.samples[i : i + 4], run.tokenizer.pad_token_id).items()
        }
        for i in range(0, min(len(run.data.samples), 64), 4)
    ]
    fisher = compute_fisher(model, batches, params)
    save_fisher(run.dir / "fisher.pt", fisher, params)


def run_sft(cfg: RunConfig, console: Console | None = None, resume: str | None = None) -> dict[str, Any]:
    console = console or Console()
    wall_start = time.perf_counter()
    run = setup(cfg, console)
    resuming = resume is not None and resolve_resume(resume, run.dir / runs.CHECKPOINTS) is not None
    before = run_eval(run, "before") if run.cfg.eval.before and not resuming else None
    if resuming and (run.dir / runs.EVAL / "before.json").is_file():
        before = load_headline(run.dir / runs.EVAL / "before.json")
    stats = train(run, resume)
    adapter_dir = save(run)
    after = run_eval(run, "after") if run.cfg.eval.after else None
    summary = {
        "run_dir": str(run.dir),
        "adapter_dir": str(adapter_dir),
        "model": cfg.model.name_or_path,
        "method": cfg.method.name,
        "before": before if isinstance(before, dict) or before is None else before.headline(),
        "after": after.headline() if after else None,
        "paired": paired_before_after(before, after),
        "train_samples": len(run.data.samples),
        "rejected_records": len(run.data.rejects),
        **stats,
        "wall_seconds": time.perf_counter() - wall_start,
    }
    write_summary(run, adapter_dir, summary)
    return summary


def write_summary(run: Run, adapter_dir: Path, summary: dict) -> None:
    """summary.json, then the adapter's model card (base, config, before/after), replacing PEFT's: every recipe."""
    if not run.accelerator.is_main_process:
        return
    (run.dir / runs.SUMMARY).write_text(json.dumps(summary, indent=2))
    if (adapter_dir / runs.PEFT_CONFIG).is_file():
        from thinktune.export.model_card import write_model_card

        write_model_card(adapter_dir, "adapter", run.cfg.model.name_or_path, run_dir=run.dir)
