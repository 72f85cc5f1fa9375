"""The policy a preference or RL recipe tunes, and its frozen reference, without a second copy of the base weights.

- `setup_run`: accelerator, run directory, seed, model + tokenizer, held-out tasks (the first half of sft.setup).
- `load_policy`: the tuning method applied to the model, or an existing PEFT adapter loaded to train further.
- `ReferencePolicy`: where π_ref log-probs come from. A fresh adapter: the same model with the adapter disabled
  (`disable_adapter()`; at step 0 policy = reference). An adapter that does not start at zero (continued training,
  PiSSA): a frozen copy of the starting adapter next to the trained one, as TRL does (megabytes, not a model).
  Methods that change base weights (full, freeze, esft): a frozen copy of the model.
- `token_logprobs`: log π(token | prefix) at every labelled position.
- `prepare_optimization` + `run_policy_loop`: optimizer, schedule (torch.compile when asked) and the shared
  TrainLoop, as DPO and GRPO run them; the loss gets the method's own term (AdaLoRA) and EWC, as in SFT, and the
  items are drawn with data.balance_by's weights.

Dropout is switched off in the policy: the importance ratio π_θ/π_old must be exactly 1 before the first update,
and the log-probs of chosen vs rejected must not depend on a dropout draw (TRL does the same).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console

from thinktune.config import DataConfig, RunConfig, to_yaml
from thinktune.data.reading import Reject, check_bad_fraction
from thinktune.errors import ConfigError, ModelNotFoundError
from thinktune.eval.tasks import load_tasks
from thinktune.methods import (
    MethodContext,
    apply_method,
    check_method_environment,
    check_method_model,
    method_loss,
    on_optimizer_step,
    optimizer_parameters,
)
from thinktune.models import load_pretrained
from thinktune.train.engine.ewc import EWCPenalty, load_fisher
from thinktune.train.engine.loggers import MetricsLog, check_trackers
from thinktune.train.engine.loop import LossFn, TrainLoop
from thinktune.train.engine.losses import trained_positions
from thinktune.train.engine.optim import build_optimizer, build_scheduler, total_optimizer_steps
from thinktune.train.engine.sampler import batches_per_epoch
from thinktune.train.engine.speed import compile_model, configure_threads
from thinktune.train.sft import Run, flat_params, load_validation, mixed_precision, validate

REFERENCE_ADAPTER = "reference"


def setup_run(cfg: RunConfig, console: Console) -> tuple[Run, list[Reject]]:
    """Accelerator, run directory with config.yaml, seed, model and tokenizer, held-out tasks (data.test) and
    validation tasks (data.validation: train.eval_steps validates on them; load_best_at_end keeps the best).

    Returns the run and the unusable test records (the recipe writes them to rejects.jsonl with its own)."""
    check_method_environment(cfg.method, cfg.train)  # before any weights load
    check_trackers(cfg.train.report_to)
    configure_threads(cfg.train.num_threads)
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision(cfg.train.mixed_precision))
    if not acc.is_main_process:
        console = Console(quiet=True)
    run = Run(cfg, cfg.run_dir, acc, console)
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / "config.yaml").write_text(to_yaml(cfg))
    set_seed(cfg.train.seed)
    with console.status(f"loading model {cfg.model.name_or_path}"):
        t = time.perf_counter()
        run.model, run.tokenizer, source = load_pretrained(cfg.model)
    check_method_model(run.model, cfg.method)
    console.print(
        f"model [bold]{source.description}[/] ({run.model.config.model_type}) in {time.perf_counter() - t:.1f}s"
    )
    rejects = []
    if cfg.data.test:
        loaded = load_tasks(cfg.data.test, cfg.data.format, cfg.eval.max_samples)
        check_bad_fraction(loaded, cfg.data.max_bad_fraction, "test data")
        run.tasks, rejects = loaded.records, loaded.rejects
    run.validation, bad = load_validation(cfg)
    return run, rejects + bad


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def load_policy(run: Run, adapter: str | Path | None = None, total_steps: int | None = None) -> torch.nn.Module:
    """The trainable policy: `adapter` (a PEFT adapter directory) loaded trainable, else method.name applied
    (`total_steps`: the run's optimizer steps, over which AdaLoRA schedules its rank budget)."""
    if adapter is not None:
        from peft import PeftModel

        path = Path(adapter)
        if not (path / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"--adapter {path}: not a PEFT adapter directory (no adapter_config.json)")
        if run.cfg.method.name in ("full", "freeze", "esft"):
            raise ConfigError(f"--adapter continues a PEFT adapter; method.name is '{run.cfg.method.name}'")
        model = PeftModel.from_pretrained(run.model, path, is_trainable=True)
    else:
        model = apply_method(run.model, run.cfg.method, MethodContext(run.tokenizer, total_steps=total_steps))
    disable_dropout(model)
    if run.cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return model


def _peft(model: torch.nn.Module):
    from peft import PeftModel

    return model if isinstance(model, PeftModel) else None


@dataclass
class ReferencePolicy:
    """π_ref for log-probs: `disabled_adapter`, `adapter` (frozen copy of the starting adapter) or `copy`."""

    kind: str
    copy: torch.nn.Module | None = None
    trained_adapter: str | None = None

    @classmethod
    def of(cls, model: torch.nn.Module, starts_at_base: bool = True) -> ReferencePolicy:
        """Build the reference for `model` as it is now (before any update).

        `starts_at_base`: a PEFT model whose adapter is a no-op at the start (fresh LoRA with B = 0), so the
        disabled adapter *is* the starting policy."""
        peft = _peft(model)
        if peft is None:
            frozen = copy.deepcopy(model).eval().requires_grad_(False)
            return cls("copy", copy=frozen)
        if starts_at_base:
            return cls("disabled_adapter")
        trained = peft.active_adapter
        peft.add_adapter(REFERENCE_ADAPTER, peft.peft_config[trained])
        params = dict(peft.named_parameters())
        with torch.no_grad():
            for name, p in params.items():
                if f".{trained}." in name:
                    params[name.replace(f".{trained}.", f".{REFERENCE_ADAPTER}.")].copy_(p)
        for name, p in params.items():
            if f".{REFERENCE_ADAPTER}." in name:
                p.requires_grad_(False)
        disable_dropout(peft)
        return cls("adapter", trained_adapter=trained)

    @contextmanager
    def active(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The module to call for reference outputs (use under torch.no_grad())."""
        if self.kind == "copy":
            yield self.copy
            return
        peft = _peft(model) or _peft(getattr(model, "module", None))
        if self.kind == "disabled_adapter":
            with peft.disable_adapter():
                yield model
            return
        # set_adapter also moves requires_grad to the active adapter; switching back restores the trained one.
        peft.set_adapter(REFERENCE_ADAPTER)
        try:
            yield model
        finally:
            peft.set_adapter(self.trained_adapter)

    @torch.no_grad()
    def logprobs(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], temperature: float = 1.0, keep: int | None = None
    ) -> torch.Tensor:
        with self.active(model) as ref:
            return token_logprobs(ref, batch, temperature, keep)

    def release(self, model: torch.nn.Module) -> None:
        """Drop the reference adapter before saving (the saved adapter must be the trained one alone)."""
        if self.kind == "adapter":
            (_peft(model) or _peft(getattr(model, "module", None))).delete_adapter(REFERENCE_ADAPTER)
        self.copy = None


def adapter_starts_at_base(model: torch.nn.Module, loaded_adapter: bool, cfg: RunConfig) -> bool:
    """Whether disabling the adapter gives back the starting policy (fresh LoRA B = 0; not PiSSA, not loaded)."""
    return _peft(model) is not None and not loaded_adapter and cfg.method.init != "pissa"


def gather_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log-softmax(logits / T) at the labelled next tokens: (B, T-1), aligned with labels[:, 1:], 0 where -100.

    Only the labelled positions are gathered before the softmax (memory ∝ completion tokens × vocabulary)."""
    pos = trained_positions(logits, labels)
    lp = torch.log_softmax(pos.logits / temperature, dim=-1).gather(1, pos.targets[:, None])[:, 0]
    out = torch.zeros(pos.mask.shape, dtype=lp.dtype, device=lp.device)
    return out.masked_scatter(pos.mask.to(lp.device), lp)


def token_logprobs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], temperature: float = 1.0, keep: int | None = None
) -> torch.Tensor:
    """Per-token log-probs of `batch["labels"]` (positions != -100) under `model`.

    `keep`: only the last `keep` tokens carry labels (left-padded prompt + completion); the LM head then runs on
    those positions alone (`logits_to_keep`) and the result is (B, keep)."""
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    if "position_ids" in batch:
        kwargs["position_ids"] = batch["position_ids"]
    labels = batch["labels"]
    if keep is not None:
        kwargs["logits_to_keep"] = keep + 1
        labels = labels[:, -(keep + 1) :]
    return gather_logprobs(model(**kwargs).logits, labels, temperature)


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


def prepare_optimization(run: Run, n_items: int, reference: ReferencePolicy | None) -> Optimization:
    """AdamW + schedule over `n_items` training items per epoch; the policy compiled (train.torch_compile) and
    prepared by Accelerate with the optimizer, the reference copy (if any) moved to the same device."""
    tcfg, acc = run.cfg.train, run.accelerator
    params = optimizer_parameters(run.model, run.cfg.method)
    steps = optimizer_steps(run, n_items)
    # after the reference is built (its frozen copy stays plain) and, as in SFT, after the method and gradient
    # checkpointing wrap the layers. GRPO refuses train.torch_compile (train/settings.py): its sampling would
    # recompile the same layers past Dynamo's limit.
    compile_model(run.model, tcfg)
    optimizer = build_optimizer(params, tcfg)
    scheduler = build_scheduler(optimizer, tcfg, steps)
    run.model, optimizer = acc.prepare(run.model, optimizer)
    if reference is not None and reference.copy is not None:
        reference.copy.to(acc.device)
    return Optimization(params, optimizer, scheduler, steps)


def balanced_weights(cfg: DataConfig, records: list[dict]) -> list[float] | None:
    """Sampling weight per training item for data.balance_by (inverse frequency, or data.balance_weights shares)."""
    if not cfg.balance_by:
        return None
    from thinktune.data.balance import sample_weights

    try:
        return sample_weights(records, cfg.balance_by, cfg.balance_weights)
    except ValueError as e:
        raise ConfigError(f"data.balance_weights: {e}") from None


def with_regularisers(run: Run, loss_fn: LossFn) -> LossFn:
    """The recipe's loss plus what SFT adds to its own: the method's term (AdaLoRA's orthogonality penalty) and the
    EWC penalty (train.ewc_lambda with train.ewc_fisher), both on the parameters, whatever the loss."""
    cfg, unwrap = run.cfg, run.accelerator.unwrap_model
    ewc = EWCPenalty(*load_fisher(cfg.train.ewc_fisher), cfg.train.ewc_lambda) if cfg.train.ewc_lambda else None

    def regularised(model, batch):
        loss, parts = loss_fn(model, batch)
        extra = method_loss(unwrap(model), cfg.method)
        if extra is not None:
            loss = loss + extra
            parts["method"] = float(extra.detach())
        if ewc is not None:
            penalty = ewc(unwrap(model))
            loss = loss + penalty
            parts["ewc"] = float(penalty.detach())
        return loss, parts

    return regularised


def run_policy_loop(
    run: Run,
    opt: Optimization,
    n_items: int,
    make_batch: Callable[[list[int]], dict],
    loss_fn: LossFn,
    reference: ReferencePolicy | None,
    sample_weights: list[float] | None = None,
    resume: str | None = None,
) -> dict[str, Any]:
    """The shared TrainLoop (checkpoints, guards, loggers, distributed) over the items, drawn with `sample_weights`
    when given, continuing from checkpoint `resume` (`auto` or a path) when given; the reference released after."""
    tcfg, acc = run.cfg.train, run.accelerator
    log = (
        MetricsLog(run.dir, tcfg.report_to, tcfg.mlflow_tracking_uri, run.cfg.name, flat_params(run.cfg))
        if acc.is_main_process
        else None
    )
    loop = TrainLoop(
        cfg=tcfg,
        accelerator=acc,
        model=run.model,
        params=opt.params,
        optimizer=opt.optimizer,
        scheduler=opt.scheduler,
        n_samples=n_items,
        make_batch=make_batch,
        loss_fn=with_regularisers(run, loss_fn),
        total_steps=opt.steps,
        sample_weights=sample_weights,
        run_dir=run.dir,
        console=run.console,
        after_step=lambda step: on_optimizer_step(acc.unwrap_model(run.model), run.cfg.method, step),
        log=log,
        validate=(lambda: validate(run)) if (tcfg.eval_steps and run.validation) else None,
    )
    try:
        result = loop.run(resume)
    finally:
        if log:
            log.close()
    if reference is not None:
        reference.release(acc.unwrap_model(run.model))
    return {
        "steps": result.steps,
        "train_seconds": result.seconds,
        "final_loss": result.final_loss,
        "bad_steps": result.bad_steps,
        "train_tokens": result.tokens,
        "stopped_early": result.stopped_early,
        "validations": result.validations,
        "best_step": result.best_step,
        "resumed_from": result.resumed_from,
    }
