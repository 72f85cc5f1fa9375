"""The policy a preference or RL recipe tunes, and its frozen reference, without a second copy of the base weights.

- `load_policy`: the tuning method applied to the model, or an existing PEFT adapter loaded to train further.
- `ReferencePolicy`: where π_ref log-probs come from. A fresh adapter: the same model with the adapter disabled
  (`disable_adapter()`; at step 0 policy = reference). An adapter that does not start at zero (continued training,
  PiSSA): a frozen copy of the starting adapter next to the trained one, as TRL does (megabytes, not a model).
  Methods that change base weights (full, freeze, esft): a frozen copy of the model.
- `token_logprobs`: log π(token | prefix) at every labelled position.

Dropout is switched off in the policy: the importance ratio π_θ/π_old must be exactly 1 before the first update,
and the log-probs of chosen vs rejected must not depend on a dropout draw (TRL does the same).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from thinktune.config import RunConfig
from thinktune.errors import ConfigError, ModelNotFoundError
from thinktune.methods import MethodContext, apply_method
from thinktune.train.engine.losses import token_logprobs
from thinktune.train.run import Run

REFERENCE_ADAPTER = "reference"


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

    def to(self, device: torch.device | str) -> ReferencePolicy:
        """The frozen copy (if any) on the policy's device, after Accelerate has placed the policy."""
        if self.copy is not None:
            self.copy.to(device)
        return self

    def release(self, model: torch.nn.Module) -> None:
        """Drop the reference adapter before saving (the saved adapter must be the trained one alone)."""
        if self.kind == "adapter":
            (_peft(model) or _peft(getattr(model, "module", None))).delete_adapter(REFERENCE_ADAPTER)
        self.copy = None


def reference_for(run: Run, loaded_adapter: bool) -> ReferencePolicy:
    """π_ref of the policy `run.model` as it is before any update (`loaded_adapter`: trained further from --adapter)."""
    return ReferencePolicy.of(run.model, adapter_starts_at_base(run.model, loaded_adapter, run.cfg))


def adapter_starts_at_base(model: torch.nn.Module, loaded_adapter: bool, cfg: RunConfig) -> bool:
    """Whether disabling the adapter gives back the starting policy (fresh LoRA B = 0; not PiSSA, not loaded)."""
    return _peft(model) is not None and not loaded_adapter and cfg.method.init != "pissa"
