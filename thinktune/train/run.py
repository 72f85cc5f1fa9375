"""The run skeleton every recipe shares:

    recipe.check → start → recipe.prepare → evaluate before → recipe.fit → save → evaluate after → summary.json

`start` owns what every run does first: the Accelerator (devices, mixed precision, the process group under torchrun),
the run directory with its config.yaml, the seed, the checks that must fail before any weights load, the model and
tokenizer, the held-out tasks (data.test) and the validation tasks (data.validation). A recipe (sft.py, dpo.py,
grpo.py) supplies its data, its trainable model and its objective; `prepare_training` + `train_loop` give every
recipe the same optimizer, schedule, TrainLoop (checkpoints, resume, guards, loggers, exact normalisation) and the
same summary keys. A resumed run does not evaluate "before" again: it reads the first segment's report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console

from thinktune import runs
from thinktune.config import RunConfig, to_yaml
from thinktune.data.reading import Reject, check_bad_fraction, write_rejects
from thinktune.errors import ConfigError, EnvironmentProblem
from thinktune.eval.generate import merged_for_inference
from thinktune.eval.report import write_report
from thinktune.eval.runner import EvalResult, evaluate, heldout_loss
from thinktune.eval.significance import paired_from_samples
from thinktune.eval.tasks import load_tasks
from thinktune.methods import (
    MethodContext,
    apply_method,
    check_method_environment,
    check_method_model,
    method_of,
    on_optimizer_step,
    optimizer_parameters,
    save_trained,
)
from thinktune.models import load_pretrained
from thinktune.models.vision import load_vision
from thinktune.progress import status, task_progress
from thinktune.train.engine.checkpoint import RecipeState, resolve_resume
from thinktune.train.engine.loggers import MetricsLog, check_trackers
from thinktune.train.engine.loop import TrainLoop
from thinktune.train.engine.monitor import plot_update_heatmap
from thinktune.train.engine.optim import build_optimizer, build_scheduler, total_optimizer_steps
from thinktune.train.engine.plots import plot_metrics
from thinktune.train.engine.sampler import batches_per_epoch
from thinktune.train.engine.sharding import enable_on_cpu, fsdp_plugin, sharded
from thinktune.train.engine.speed import check_speed_environment, compile_model, configure_threads
from thinktune.train.objectives import Objective, parameter_penalty


@dataclass
class Run:
    cfg: RunConfig
    dir: Path
    accelerator: Accelerator
    console: Console
    model: Any = None
    tokenizer: Any = None
    tasks: list[dict] | None = None  # data.test: evaluated before and after
    validation: list[dict] | None = None  # data.validation: train.eval_steps validates on it
    vision: Any = None  # a vision-language model's way of taking images (models/vision.py); None for text-only
    rejects: list[Reject] = field(default_factory=list)  # → rejects.jsonl


class Recipe(Protocol):
    name: str  # sft, dpo, grpo

    def check(self, cfg: RunConfig) -> None:
        """What can fail before anything loads: settings the recipe does not use, missing data files."""

    def prepare(self, run: Run) -> str:
        """Data (its rejects into run.rejects) and, where the evaluation before must see it, the trainable model;
        returns the data line to print (e.g. '120 training samples from 130 records')."""

    def fit(self, run: Run, resume: str | None) -> dict[str, Any]:
        """Train (prepare_training + train_loop); the loop's statistics."""

    def finish(self, run: Run) -> dict[str, Any]:
        """After saving (main process writes files): the recipe's own summary entries."""


# ---- start ---------------------------------------------------------------------------------------------------------


def mixed_precision(choice: str) -> str:
    cuda = torch.cuda.is_available()
    if choice == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if choice == "fp16" and not cuda:
        raise EnvironmentProblem("train.mixed_precision=fp16 needs a CUDA GPU; use 'no' or 'bf16' on CPU")
    return choice


def load_validation(cfg: RunConfig) -> tuple[list[dict] | None, list[Reject]]:
    """data.validation's tasks and rejects; train.eval_steps / load_best_at_end without it is a config error."""
    if cfg.train.load_best_at_end and not cfg.train.eval_steps:
        raise ConfigError("train.load_best_at_end needs train.eval_steps (how often to validate)")
    if cfg.data.validation:
        loaded = load_tasks(cfg.data.validation, cfg.data.format, cfg.eval.max_samples, cfg.data.rag)
        check_bad_fraction(loaded, cfg.data.max_bad_fraction, "validation data")
        return loaded.records, loaded.rejects
    if cfg.train.eval_steps:
        raise ConfigError("train.eval_steps needs data.validation (a file with reference answers)")
    return None, []


def start(cfg: RunConfig, console: Console, recipe: str = "sft") -> Run:
    configure_threads(cfg.train.num_threads)
    plugin = fsdp_plugin(cfg.train, cfg.method.name, recipe)  # train.distributed=fsdp: FSDP2, else replicas (DDP)
    acc = Accelerator(
        cpu=not torch.cuda.is_available(),  # also what makes torchrun on CPU form a gloo process group
        mixed_precision=mixed_precision(cfg.train.mixed_precision),
        fsdp_plugin=plugin,
    )
    enable_on_cpu(acc, plugin)
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
    with status(console, f"loading model {cfg.model.name_or_path} (first use of a GGUF converts it once)"):
        t = time.perf_counter()
        run.model, run.tokenizer, source = load_pretrained(cfg.model, quantization)
        run.vision = load_vision(run.model, source.path)
    check_method_model(run.model, cfg.method)  # before the evaluation: ESFT on a dense model stops here
    console.print(
        f"model [bold]{source.description}[/] ({run.model.config.model_type}, "
        f"{sum(p.numel() for p in run.model.parameters()) / 1e6:.1f}M params) in {time.perf_counter() - t:.1f}s"
    )
    if cfg.data.test:
        loaded = load_tasks(cfg.data.test, cfg.data.format, cfg.eval.max_samples, cfg.data.rag)
        check_bad_fraction(loaded, cfg.data.max_bad_fraction, "test data")
        run.tasks, run.rejects = loaded.records, list(loaded.rejects)
    run.validation, bad = load_validation(cfg)
    run.rejects += bad
    return run


# ---- evaluation ----------------------------------------------------------------------------------------------------


def run_eval(run: Run, label: str, merged: bool = False) -> EvalResult | None:
    """The held-out evaluation; `merged`: with the adapter merged into the weights (after training, when the model
    trains no further: the same model, fewer matmuls per token)."""
    if not run.tasks or not run.accelerator.is_main_process:
        return None
    model = run.accelerator.unwrap_model(run.model)
    with (
        merged_for_inference(model) if merged else nullcontext(model) as model,
        task_progress(run.console, f"eval {label}") as bar,
    ):
        task = bar.add_task(label, total=len(run.tasks))
        result = evaluate(
            model,
            run.tokenizer,
            run.tasks,
            run.cfg.eval,
            run.cfg.data.system_prompt,
            progress=lambda n: bar.advance(task, n),
            thinking=run.cfg.data.thinking,
            vision=run.vision,
        )
    write_report(result, run.dir / runs.EVAL, label, f"{label}: {run.cfg.model.name_or_path}")
    run.console.print(
        f"eval {label}: accuracy {result.accuracy:.1%}, format {result.format_compliance:.1%}, "
        f"loss {result.loss:.3f} ({result.seconds:.0f}s, generating "
        f"{result.extra.get('generation_tokens_per_second', 0):.0f} tokens/s)"
    )
    return result


def evaluate_before(run: Run, resume: str | None) -> EvalResult | dict | None:
    """The evaluation before training; a resumed run reads the first segment's headline instead of redoing it."""
    resuming = resume is not None and resolve_resume(resume, run.dir / runs.CHECKPOINTS) is not None
    if not resuming:
        return run_eval(run, "before") if run.cfg.eval.before else None
    report = run.dir / runs.EVAL / "before.json"
    return json.loads(report.read_text())["headline"] if report.is_file() else None


def paired_before_after(before: EvalResult | dict | None, after: EvalResult | None) -> dict[str, Any] | None:
    """Before vs after on the same held-out tasks: gained/lost, Δaccuracy with its 95% interval, McNemar p
    (eval/significance.py); None when either side has no per-task records (no eval, or a resumed run)."""
    if not isinstance(before, EvalResult) or after is None:
        return None
    return paired_from_samples(before.samples, after.samples)


@torch.no_grad()
def validate(run: Run) -> dict[str, float]:
    """Validation loss on data.validation plus generation metrics (accuracy, format, eval.metrics) on its tasks."""
    model = run.accelerator.unwrap_model(run.model)
    values: dict[str, float] = {}
    loss = heldout_loss(
        model, run.tokenizer, run.validation, run.cfg.data.system_prompt, run.cfg.eval.batch_size, vision=run.vision
    )
    if loss is not None:
        values["val_loss"] = loss
    r = evaluate(
        model,
        run.tokenizer,
        run.validation,
        run.cfg.eval,
        run.cfg.data.system_prompt,
        thinking=run.cfg.data.thinking,
        vision=run.vision,
    )
    values.update(accuracy=r.accuracy, format_compliance=r.format_compliance, **r.extra)
    return values


# ---- training ------------------------------------------------------------------------------------------------------


@dataclass
class Optimization:
    params: list
    optimizer: Any
    scheduler: Any
    steps: int


def optimizer_steps(run: Run, n_items: int) -> int:
    """Optimizer steps of the run over `n_items` training items per epoch (train.max_steps or epochs)."""
    tcfg = run.cfg.train
    return total_optimizer_steps(tcfg, batches_per_epoch(n_items, tcfg.batch_size, run.accelerator.num_processes))


def learning_rate(run: Run) -> float:
    """train.learning_rate, or the method's default scaled to the model's width (said on the console)."""
    if run.cfg.train.learning_rate is not None:
        return run.cfg.train.learning_rate
    from thinktune.methods.base import REFERENCE_WIDTH, default_learning_rate

    name = run.cfg.method.name
    config = getattr(run.model, "config", None)
    hidden = getattr(config.get_text_config(), "hidden_size", None) if config is not None else None
    lr, factor = default_learning_rate(method_of(run.cfg.method), hidden)
    run.console.print(
        f"learning rate {lr:.3g}: {name}'s default {method_of(run.cfg.method).learning_rate:g} x {factor:.2f} "
        f"(hidden size {hidden or '?'} vs {REFERENCE_WIDTH}; set train.learning_rate to choose)"
    )
    return lr


def prepare_training(run: Run, n_items: int) -> Optimization:
    """The optimizer (AdamW) and schedule over `n_items` training items per epoch, for the trainable model as the
    recipe made it; the model compiled (train.torch_compile: after the method and gradient checkpointing wrap the
    layers) and prepared by Accelerate with the optimizer. The scheduler is not prepared: Accelerate would step it
    once per process."""
    tcfg, acc = run.cfg.train, run.accelerator
    params = optimizer_parameters(run.model, run.cfg.method)
    steps = optimizer_steps(run, n_items)
    compile_model(run.model, tcfg)
    optimizer = build_optimizer(params, tcfg, learning_rate(run))
    scheduler = build_scheduler(optimizer, tcfg, steps)
    run.model, optimizer = acc.prepare(run.model, optimizer)
    if sharded(acc):  # the optimizer now steps the sharded parameters, under the same names
        now = dict(run.model.named_parameters())
        params = [(n, now[n]) for n, _ in params]
    if acc.num_processes > 1:
        run.console.print(
            f"{acc.num_processes} processes: "
            + ("FSDP2, parameters, gradients and optimizer state sharded" if sharded(acc) else "DDP, replicas")
        )
    return Optimization(params, optimizer, scheduler, steps)


def flat_params(cfg: RunConfig) -> dict[str, Any]:
    flat = {}
    for section, values in cfg.model_dump(mode="json").items():
        if isinstance(values, dict):
            flat.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            flat[section] = values
    return flat


def train_loop(
    run: Run,
    opt: Optimization,
    n_items: int,
    make_batch: Callable[[list[int]], dict],
    objective: Objective,
    sample_weights: list[float] | None = None,
    resume: str | None = None,
    state: RecipeState | None = None,
    epoch_make_batch: Callable[[int], Callable[[list[int]], dict]] | None = None,
) -> dict[str, Any]:
    """The shared TrainLoop over the items, drawn with `sample_weights` when given (data.balance_by), the objective
    plus the parameter penalty (method term, EWC), validation when train.eval_steps, from checkpoint `resume`;
    `state`: the recipe's own resume state, saved in every checkpoint; `epoch_make_batch`: make_batch per epoch
    (the epoch's augmented samples) instead of `make_batch`."""
    tcfg, acc = run.cfg.train, run.accelerator
    log = None
    if acc.is_main_process:
        log = MetricsLog(run.dir, tcfg.report_to, tcfg.mlflow_tracking_uri, run.cfg.name, flat_params(run.cfg))
    loop = TrainLoop(
        cfg=tcfg,
        accelerator=acc,
        model=run.model,
        params=opt.params,
        optimizer=opt.optimizer,
        scheduler=opt.scheduler,
        n_samples=n_items,
        make_batch=make_batch,
        loss_fn=objective.loss,
        units=objective.units,
        penalty=parameter_penalty(run.cfg, acc.unwrap_model),
        state=state,
        epoch_make_batch=epoch_make_batch,
        total_steps=opt.steps,
        run_dir=run.dir,
        console=run.console,
        sample_weights=sample_weights,
        validate=(lambda: validate(run)) if (tcfg.eval_steps and run.validation) else None,
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


def balanced_weights(cfg: RunConfig, records: list[dict]) -> list[float] | None:
    """Sampling weight per training item for data.balance_by (inverse frequency, or data.balance_weights shares)."""
    if not cfg.data.balance_by:
        return None
    from thinktune.data.balance import sample_weights

    try:
        return sample_weights(records, cfg.data.balance_by, cfg.data.balance_weights)
    except ValueError as e:
        raise ConfigError(f"data.balance_weights: {e}") from None


# ---- save, summary -------------------------------------------------------------------------------------------------


def save(run: Run) -> Path:
    """What training changed (runs.py: adapter/ or model/ or trained.safetensors), the tokenizer beside it, the
    base model recorded in a PEFT adapter, the metric plots."""
    adapter_dir = run.dir / runs.ADAPTER
    run.accelerator.wait_for_everyone()
    gather(run)
    if run.accelerator.is_main_process:
        adapter_dir = save_trained(run.accelerator.unwrap_model(run.model), run.cfg.method, run.dir)
        run.tokenizer.save_pretrained(adapter_dir)
        if run.vision is not None:  # a full model (or adapter) folder that serve, eval and export load on its own
            run.vision.processor.save_pretrained(adapter_dir)
        if (adapter_dir / runs.PEFT_CONFIG).is_file():  # PEFT wrote the path the weights loaded from
            from thinktune.export.model_card import record_base_model

            record_base_model(adapter_dir, run.cfg.model.name_or_path)
        plot_metrics(run.dir / "metrics.jsonl", run.dir / "plots")
        plot_update_heatmap(run.dir / "metrics.jsonl", run.dir / "plots" / "update_heatmap.png")
    return adapter_dir


def gather(run: Run) -> None:
    """A sharded run: the whole trained model on the main process (a fresh copy of the model as the method made it,
    given the gathered weights), for saving and the evaluation after; every process takes part in the gathering."""
    acc = run.accelerator
    if not sharded(acc):
        return
    full = acc.get_state_dict(run.model)  # main process: every tensor, whole, on the CPU; the others: nothing
    run.model = None  # the shards and their optimizer state are done with: free the device for the whole model
    acc.free_memory()
    if acc.is_main_process:
        model, _, _ = load_pretrained(run.cfg.model)
        model = apply_method(model, run.cfg.method, MethodContext(run.tokenizer))
        model.load_state_dict(full)
        run.model = model.to(acc.device)


def write_summary(run: Run, adapter_dir: Path, summary: dict) -> None:
    """summary.json, then the adapter's model card (base, config, before/after), replacing PEFT's."""
    if not run.accelerator.is_main_process:
        return
    (run.dir / runs.SUMMARY).write_text(json.dumps(summary, indent=2))
    if (adapter_dir / runs.PEFT_CONFIG).is_file():
        from thinktune.export.model_card import write_model_card

        write_model_card(
            adapter_dir, "adapter", run.cfg.model.name_or_path, run_dir=run.dir, images=run.vision is not None
        )


def execute(cfg: RunConfig, recipe: Recipe, console: Console | None = None, resume: str | None = None) -> dict:
    """One run of `recipe`, start to summary.json; returns the summary."""
    console = console or Console()
    wall = time.perf_counter()
    recipe.check(cfg)
    run = start(cfg, console, recipe.name)
    data_line = recipe.prepare(run)
    write_rejects(run.rejects, run.dir / "rejects.jsonl")
    run.console.print(  # the main process's console; the others' are quiet
        f"data: {data_line}, {len(run.tasks or [])} test tasks, {len(run.rejects)} rejected (→ rejects.jsonl)"
    )
    before = evaluate_before(run, resume)
    stats = recipe.fit(run, resume)
    adapter_dir = save(run)
    own = recipe.finish(run)
    after = run_eval(run, "after", merged=True) if cfg.eval.after else None
    summary = {
        "run_dir": str(run.dir),
        "adapter_dir": str(adapter_dir),
        "recipe": recipe.name,
        "model": cfg.model.name_or_path,
        "method": cfg.method.name,
        "before": before if isinstance(before, dict) or before is None else before.headline(),
        "after": after.headline() if after else None,
        "paired": paired_before_after(before, after),
        **own,
        **stats,
        "wall_seconds": time.perf_counter() - wall,
    }
    write_summary(run, adapter_dir, summary)
    return summary
