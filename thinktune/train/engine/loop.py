"""The training loop every recipe shares: batches → loss → guarded optimizer step → logs, checkpoints, validation.

A recipe supplies `make_batch(indices) -> batch` (or `epoch_make_batch(epoch) -> make_batch` when an epoch's
samples differ, as with data.augment; it is asked again for the epoch a resume lands in) and its objective:
`loss_fn(model, batch) -> (loss, parts)`, a mean over the batch's `units` (trained tokens by default; sequences or
pairs), and optionally a `penalty` on the parameters. The loop owns exact normalisation over micro-batches and
processes, gradient accumulation, clipping, NaN/spike guards, checkpoint/resume, metrics and early stopping. Devices,
mixed precision, DDP gradient averaging and FSDP2 sharding (sharding.py) are Accelerate's.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from rich.console import Console

from thinktune.config import TrainConfig
from thinktune.errors import UserError
from thinktune.progress import training_progress
from thinktune.train.engine import monitor
from thinktune.train.engine.checkpoint import (
    RecipeState,
    TrainPosition,
    load_best,
    load_checkpoint,
    load_recipe_state,
    resolve_resume,
    save_best,
    save_checkpoint,
    stage_recipe_state,
    stage_shard,
)
from thinktune.train.engine.guards import Plateau, SpikeDetector, is_finite
from thinktune.train.engine.loggers import MetricsLog, read_metrics
from thinktune.train.engine.sampler import epoch_batches
from thinktune.train.engine.sharding import local_or_full, shard_state, sharded

Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]
UnitsFn = Callable[[Batch], int]
Penalty = Callable[[torch.nn.Module], tuple[torch.Tensor, dict[str, float]]]


def trained_tokens(batch: Batch) -> int:
    """Units of a token-mean loss: the positions with a label after the causal shift."""
    return int((batch["labels"][:, 1:] != -100).sum())


class TrainingStopped(UserError):
    """The run stopped itself (too many bad steps, a spike with spike_action=stop); the last checkpoint is intact."""


@dataclass
class LoopResult:
    steps: int
    tokens: int
    seconds: float
    final_loss: float
    bad_steps: int = 0
    spikes: int = 0
    rollbacks: int = 0
    stopped_early: str | None = None
    resumed_from: str | None = None
    validations: list[dict[str, float]] = field(default_factory=list)
    best_step: int | None = None  # train.load_best_at_end: the step whose weights the run ends with


@dataclass
class TrainLoop:
    cfg: TrainConfig
    accelerator: Accelerator
    model: torch.nn.Module
    params: list[tuple[str, torch.nn.Parameter]]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    n_samples: int
    make_batch: Callable[[list[int]], dict[str, torch.Tensor]]
    loss_fn: LossFn
    total_steps: int
    run_dir: Path
    console: Console
    sample_weights: list[float] | None = None
    validate: Callable[[], dict[str, float]] | None = None
    after_step: Callable[[int], None] | None = None
    log: MetricsLog | None = None
    units: UnitsFn = trained_tokens  # what loss_fn's mean is over (see _accumulate)
    penalty: Penalty | None = None  # a term on the parameters (EWC, AdaLoRA's), once per optimizer step
    state: RecipeState | None = None  # the recipe's own resume state (GRPO's kept rollouts, prompt stream)
    epoch_make_batch: Callable[[int], Callable[[list[int]], dict[str, torch.Tensor]]] | None = None

    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / "checkpoints"

    def run(self, resume: str | None = None) -> LoopResult:
        cfg, acc = self.cfg, self.accelerator
        pos = TrainPosition()
        resumed = resolve_resume(resume, self.checkpoint_root)
        if resumed is not None:
            pos = load_checkpoint(resumed, self.params, self.optimizer, self.scheduler, *self._layout)
            if self.state is not None:
                load_recipe_state(resumed, acc.process_index, self.state)
            self._truncate_metrics(pos.step)
            self.console.print(
                f"resumed from [bold]{resumed}[/] at step {pos.step} (epoch {pos.epoch}, batch {pos.batch_in_epoch})"
            )
        spikes, plateau = SpikeDetector(cfg.spike_window), Plateau(mode=self._metric_mode())
        result = LoopResult(0, pos.tokens, 0.0, math.nan, resumed_from=str(resumed) if resumed else None)
        if cfg.load_best_at_end:
            if self.validate is None:
                raise UserError("train.load_best_at_end needs train.eval_steps and data.validation")
            if resumed is None:
                self._validation(pos, plateau, result)  # the starting weights are a candidate too
            else:
                self._load_best(pos, plateau)
        accum = cfg.gradient_accumulation_steps
        window_tokens, window_start, start = 0, time.perf_counter(), time.perf_counter()
        carried = pos.seconds  # training time of the segments before this resume
        self.model.train()
        with training_progress(self.console) as bar:
            task = bar.add_task(
                "train",
                total=self.total_steps,
                completed=pos.step,
                loss=math.nan,
                lr=self.scheduler.get_last_lr()[0],
                tps=0.0,
            )
            while pos.step < self.total_steps and result.stopped_early is None:
                batches = epoch_batches(
                    self.n_samples,
                    cfg.batch_size,
                    cfg.seed,
                    pos.epoch,
                    acc.process_index,
                    acc.num_processes,
                    self.sample_weights,
                )
                make_batch = self.epoch_make_batch(pos.epoch) if self.epoch_make_batch else self.make_batch
                while pos.batch_in_epoch < len(batches) and pos.step < self.total_steps:
                    # One optimizer step: the accumulation group's micro-batches (fewer at the end of an epoch),
                    # built first so that their units are known before the first backward.
                    first = pos.batch_in_epoch
                    end = min((first // accum + 1) * accum, len(batches))
                    micro = [
                        {k: v.to(acc.device) for k, v in make_batch(batches[b]).items()} for b in range(first, end)
                    ]
                    tokens_before = pos.tokens
                    step_loss, step_parts = self._accumulate(micro, pos)
                    window_tokens += pos.tokens - tokens_before
                    outcome = self._optimizer_step(step_loss, pos, spikes, result)
                    if outcome == "rollback":
                        self._rollback(pos, result)
                        spikes = SpikeDetector(cfg.spike_window)
                        break
                    if outcome == "skipped":
                        continue
                    pos.step += 1
                    now = time.perf_counter()
                    pos.seconds = carried + now - start
                    tps = window_tokens * acc.num_processes / max(now - window_start, 1e-9)
                    window_tokens, window_start = 0, now
                    lr = self.scheduler.get_last_lr()[0]
                    bar.update(task, completed=pos.step, loss=step_loss, lr=lr, tps=tps)
                    result.final_loss = step_loss
                    record = {
                        "loss": step_loss,
                        "lr": lr,
                        "grad_norm": self._last_grad_norm,
                        "tokens_per_second": tps,
                        "tokens": pos.tokens * acc.num_processes,
                        "epoch": pos.epoch + pos.batch_in_epoch / len(batches),
                        "memory_mb": _memory_mb(),
                        "bad_steps": pos.bad_steps,
                    }
                    record.update({k: v for k, v in step_parts.items() if k != "loss"})
                    if self._layer_stats:
                        record.update(self._layer_stats)
                    if self.log and pos.step % cfg.logging_steps == 0:
                        self.log.log(pos.step, record)
                    if cfg.eval_steps and self.validate and pos.step % cfg.eval_steps == 0:
                        self._validation(pos, plateau, result)
                    if cfg.save_steps and pos.step % cfg.save_steps == 0:
                        self._save(pos)
                    if cfg.max_minutes and self._out_of_time(pos.seconds):
                        result.stopped_early = (
                            f"time budget of {cfg.max_minutes:g} min reached at step {pos.step} of {self.total_steps}"
                        )
                        self.console.print(result.stopped_early)
                        break
                else:
                    if pos.batch_in_epoch >= len(batches):
                        pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
                        if cfg.save_steps:
                            self._save(pos)
        result.steps, result.tokens = pos.step, pos.tokens * acc.num_processes
        result.seconds = time.perf_counter() - start
        if cfg.load_best_at_end and self._best is not None:
            self._restore_best(pos, result)
        result.bad_steps = pos.bad_steps
        return result

    # --- one accumulation group: exact normalisation -------------------------------------------------------------
    def _accumulate(self, micro: list[dict[str, torch.Tensor]], pos: TrainPosition) -> tuple[float, dict[str, float]]:
        """Forward/backward of one optimizer step's micro-batches; returns its loss and logged parts.

        `loss_fn` returns a mean over its batch's units (`units`: trained tokens, sequences, pairs). Each micro-batch's
        mean is weighted by its units over the units of the whole step on every process — times the world size, to
        undo DDP's gradient averaging — so the gradient is the objective's mean over the global batch, however it is
        split into micro-batches and processes (a short last group of an epoch included). The penalty (a term on the
        parameters, not on the data) counts once per step."""
        acc = self.accelerator
        local = [int(self.units(m)) for m in micro]
        total_units = float(acc.reduce(torch.tensor([float(sum(local))], device=acc.device), "sum")[0])
        scale = acc.num_processes / max(total_units, 1.0)
        loss_sum, parts_sum, penalty_value, penalty_parts = 0.0, {}, 0.0, {}
        for i, batch in enumerate(micro):
            context = acc.no_sync(self.model) if i < len(micro) - 1 else _null()
            with context, acc.autocast():
                loss, parts = self.loss_fn(self.model, batch)
                weighted = loss * (local[i] * scale)
                if self.penalty is not None:
                    term, penalty_parts = self.penalty(self.model)
                    weighted = weighted + term / len(micro)
                    penalty_value = float(term.detach())
                acc.backward(weighted)
            loss_sum += float(loss.detach()) * local[i]
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v * local[i]
            pos.tokens += int(batch["attention_mask"].sum())
            pos.batch_in_epoch += 1
        summed = float(acc.reduce(torch.tensor([loss_sum], device=acc.device), "sum")[0])
        here = max(sum(local), 1)
        parts = {k: v / here for k, v in parts_sum.items()}
        parts.update(penalty_parts)
        return summed / max(total_units, 1.0) + penalty_value, parts

    # --- one optimizer step, guarded ---------------------------------------------------------------------------
    _last_grad_norm: float | None = None
    _layer_stats: dict[str, Any] | None = None

    def _optimizer_step(self, step_loss: float, pos: TrainPosition, spikes: SpikeDetector, result: LoopResult) -> str:
        cfg, acc = self.cfg, self.accelerator
        params = [p for _, p in self.params]
        if cfg.max_grad_norm:
            grad_norm = float(local_or_full(acc.clip_grad_norm_(params, cfg.max_grad_norm)))
        else:
            grads = [p.grad.detach() for p in params if p.grad is not None]
            grad_norm = float(local_or_full(torch.nn.utils.get_total_norm(grads))) if grads else 0.0
        self._last_grad_norm = grad_norm
        loss_t = acc.reduce(torch.tensor(step_loss, device=acc.device), reduction="mean")
        if not is_finite(float(loss_t), grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            if self._scaler_backs_off(float(loss_t)):
                return "skipped"
            pos.bad_steps += 1
            self.console.print(
                f"[yellow]step {pos.step + 1}: non-finite loss or gradient, step skipped "
                f"({pos.bad_steps}/{cfg.max_bad_steps})[/]"
            )
            if pos.bad_steps > cfg.max_bad_steps:
                last = self._latest_checkpoint()
                raise TrainingStopped(
                    f"stopped: {pos.bad_steps} non-finite steps > train.max_bad_steps={cfg.max_bad_steps}; "
                    f"last checkpoint: {last or 'none (set train.save_steps)'}; try a lower train.learning_rate"
                )
            return "skipped"
        if spikes.update(grad_norm):
            result.spikes += 1
            msg = (
                f"step {pos.step + 1}: gradient-norm spike {grad_norm:.3g} > mean + 3σ "
                f"({spikes.threshold():.3g}) of the last {len(spikes.history)} steps"
            )
            if cfg.spike_action == "stop":
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingStopped(
                    f"stopped: {msg} (train.spike_action=stop); last checkpoint: {self._latest_checkpoint() or 'none'}"
                )
            if cfg.spike_action == "rollback" and self._latest_checkpoint() is not None:
                self.optimizer.zero_grad(set_to_none=True)
                self.console.print(f"[yellow]{msg}: rolling back to the last checkpoint with the lr halved[/]")
                return "rollback"
            self.console.print(f"[yellow]warning: {msg}[/]")
        want_stats = cfg.layer_stats_steps and (pos.step + 1) % cfg.layer_stats_steps == 0
        before = monitor.snapshot(self.params) if want_stats else None
        grads = monitor.grad_norms(self.params) if want_stats else None
        self.optimizer.step()
        if self.after_step:
            self.after_step(pos.step + 1)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._layer_stats = (
            {"grad_norms": grads, "update_norms": monitor.update_norms(before, self.params)} if want_stats else None
        )
        return "stepped"

    def _scaler_backs_off(self, loss: float) -> bool:
        """fp16: every skipped step must reach the gradient scaler, or its scale never backs off and the next clip
        unscales gradients already unscaled. The scaler lowers its scale as its own skipped step would; an overflow
        of the scaled gradients under a finite loss is then its business, not a bad step (True)."""
        scaler = getattr(self.optimizer, "scaler", None)  # Accelerate's GradScaler under fp16, else None
        if scaler is None or not scaler.is_enabled():
            return False
        scaler.update(scaler.get_scale() * scaler.get_backoff_factor())  # also resets its per-step unscale state
        if math.isfinite(loss):
            self.console.print(f"[dim]fp16 gradient overflow: step skipped, loss scale → {scaler.get_scale():g}[/]")
            return True
        return False

    # --- checkpoints, rollback, validation ---------------------------------------------------------------------
    def _save(self, pos: TrainPosition) -> None:
        self.accelerator.wait_for_everyone()
        if self.state is not None:
            stage_recipe_state(self.checkpoint_root, pos.step, self.accelerator.process_index, self.state)
            self.accelerator.wait_for_everyone()
        acc = self.accelerator
        model = acc.unwrap_model(self.model)
        adapter = model if hasattr(model, "peft_config") else None  # the checkpoint is a PEFT adapter too
        shards, adapter_state = sharded(acc), None
        if shards:  # every process stages its shard; the adapter's tensors are gathered whole on the main process
            stage_shard(self.checkpoint_root, pos.step, acc.process_index, *shard_state(self.params, self.optimizer))
            adapter_state = acc.get_state_dict(self.model) if adapter is not None else None
            acc.wait_for_everyone()
        if acc.is_main_process:
            save_checkpoint(
                self.checkpoint_root,
                pos,
                None if shards else self.params,
                None if shards else self.optimizer,
                self.scheduler,
                self.cfg.save_total_limit,
                adapter=adapter,
                adapter_state=adapter_state,
                processes=acc.num_processes,
            )
        acc.wait_for_everyone()

    @property
    def _layout(self) -> tuple[int, int | None]:
        """(processes, this process's shard: None when every process holds the whole model)."""
        acc = self.accelerator
        return acc.num_processes, acc.process_index if sharded(acc) else None

    def _latest_checkpoint(self) -> Path | None:
        return resolve_resume("auto", self.checkpoint_root)

    def _rollback(self, pos: TrainPosition, result: LoopResult) -> None:
        latest = self._latest_checkpoint()
        restored = load_checkpoint(latest, self.params, self.optimizer, self.scheduler, *self._layout)
        if self.state is not None:
            load_recipe_state(latest, self.accelerator.process_index, self.state)
        restored.bad_steps = pos.bad_steps
        self.scheduler.base_lrs = [lr * 0.5 for lr in self.scheduler.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True):
            group["lr"] = lr * 0.5
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        result.rollbacks += 1
        pos.__dict__.update(restored.__dict__)

    def _metric_mode(self) -> str:
        return "min" if "loss" in self.cfg.metric_for_best or "perplexity" in self.cfg.metric_for_best else "max"

    _best: tuple[int, float, dict[str, torch.Tensor]] | None = None

    def _restore_best(self, pos: TrainPosition, result: LoopResult) -> None:
        step, value, weights = self._best
        result.best_step = step
        if step != pos.step:
            with torch.no_grad():
                for name, p in self.params:
                    p.copy_(weights[name].to(p.device))
        self.console.print(
            f"load_best_at_end: ending with the weights of step {step} ({self.cfg.metric_for_best} {value:.4f})"
        )

    def _load_best(self, pos: TrainPosition, plateau: Plateau) -> None:
        """The best weights saved before the resume, if validated at or before the resumed step (a later best
        belongs to steps that will run again); the plateau starts from its value."""
        best = load_best(self.checkpoint_root)
        if best is not None and best[0] <= pos.step:
            self._best = best
            plateau.update(best[1])

    def _validation(self, pos: TrainPosition, plateau: Plateau, result: LoopResult) -> None:
        values = self.validate()
        self.model.train()
        values["step"] = pos.step
        result.validations.append(values)
        if self.log:
            self.log.log(
                pos.step, {f"val_{k}" if not k.startswith("val_") else k: v for k, v in values.items() if k != "step"}
            )
        key = self.cfg.metric_for_best
        value = values.get(key, values.get(key.removeprefix("val_")))
        if value is None:
            raise UserError(
                f"train.metric_for_best: '{key}' is not a validation metric (have: "
                f"{', '.join(k for k in values if k != 'step')})"
            )
        improved = plateau.update(float(value))
        if improved and self.cfg.load_best_at_end:  # a CPU copy of what trains (a LoRA: megabytes)
            self._best = (pos.step, float(value), {n: p.detach().to("cpu", copy=True) for n, p in self.params})
            if self.accelerator.is_main_process:  # on disk too, so that a resumed run still ends with it
                save_best(self.checkpoint_root, *self._best)
        self.console.print(f"validation at step {pos.step}: {key} {value:.4f}" + (" (best)" if improved else ""))
        if not improved and self.cfg.plateau_patience and plateau.bad_evals % self.cfg.plateau_patience == 0:
            self.scheduler.base_lrs = [lr * 0.5 for lr in self.scheduler.base_lrs]
            self.console.print(f"no gain for {plateau.bad_evals} validations: learning rate halved")
        if self.cfg.early_stopping_patience and plateau.bad_evals >= self.cfg.early_stopping_patience:
            result.stopped_early = (
                f"early stopping at step {pos.step}: no {key} gain in {plateau.bad_evals} validations"
            )
            self.console.print(result.stopped_early)

    def _out_of_time(self, seconds: float) -> bool:
        """`seconds` of training so far (resumed segments included). All processes stop together: any one past the
        budget stops them all."""
        late = float(seconds >= self.cfg.max_minutes * 60)
        return bool(self.accelerator.reduce(torch.tensor([late], device=self.accelerator.device), "sum")[0] > 0)

    def _truncate_metrics(self, step: int) -> None:
        """Steps logged after the checkpoint by the killed run are replayed; drop them so the curve stays single."""
        if self.log is None:
            return
        rows = [r for r in read_metrics(self.log.path) if r["step"] <= step]
        import json

        self.log._file.close()
        self.log.path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        self.log._file = open(self.log.path, "a")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
