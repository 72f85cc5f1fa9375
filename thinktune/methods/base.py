"""The shape of a tuning method, and the few pieces every family shares.

A `Method` is a bundle of functions; the registry in `methods/__init__.py` maps names to them. Per-run state that a
method needs between calls (PiSSA's initial adapter, AdaLoRA's gradients, ESFT's expert masks, the parameters that
progressive unfreezing unlocks later) lives on the model object under `STATE_ATTR`, never in module globals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from thinktune.config import MethodConfig
from thinktune.errors import ConfigError
from thinktune.models.registry import ArchFacts, arch_facts
from thinktune.runs import ADAPTER

STATE_ATTR = "thinktune_method_state"


@dataclass
class MethodContext:
    """What some methods need beyond the model: the tokenizer and training samples (ESFT profiles experts on them),
    and the number of optimizer steps of the run (AdaLoRA schedules its rank budget over it)."""

    tokenizer: Any = None
    samples: list = field(default_factory=list)
    total_steps: int | None = None


NamedParams = list[tuple[str, torch.nn.Parameter]]


def trainable_parameters(model: torch.nn.Module, cfg: MethodConfig) -> NamedParams:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def save_peft_adapter(model: torch.nn.Module, cfg: MethodConfig, run_dir: Path) -> Path:
    """PEFT methods: `run_dir/adapter`, loadable with PeftModel.from_pretrained."""
    out = run_dir / ADAPTER
    model.save_pretrained(out)
    return out


@dataclass(frozen=True)
class Method:
    """One tuning method. Only `apply` is required; the rest default to 'a PEFT adapter of requires_grad params'."""

    apply: Callable[[PreTrainedModel, MethodConfig, MethodContext], torch.nn.Module]
    check: Callable[[MethodConfig], None] | None = None  # before the model loads: config and machine
    parameters: Callable[[torch.nn.Module, MethodConfig], NamedParams] = trainable_parameters
    on_step: Callable[[torch.nn.Module, MethodConfig, int], None] | None = None
    loss: Callable[[torch.nn.Module, MethodConfig], torch.Tensor | None] | None = None
    save: Callable[[torch.nn.Module, MethodConfig, Path], Path] = save_peft_adapter
    learning_rate: float = 1.4e-4  # the default peak learning rate at REFERENCE_WIDTH (see default_learning_rate)


def method_state(model: torch.nn.Module) -> dict[str, Any]:
    """The per-run state a method keeps on its model (created empty on first use)."""
    state = model.__dict__.get(STATE_ATTR)
    if state is None:
        state = {}
        model.__dict__[STATE_ATTR] = state
    return state


def facts_of(model: torch.nn.Module) -> ArchFacts | None:
    config = getattr(model, "config", None)
    return arch_facts(getattr(config, "model_type", "")) if config is not None else None


def require_moe(model: torch.nn.Module, what: str) -> ArchFacts:
    facts = facts_of(model)
    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    if facts is None or not facts.moe:
        raise ConfigError(f"{what} needs a mixture-of-experts model with a known expert layout; got '{model_type}'")
    return facts


REFERENCE_WIDTH = 4096  # the hidden size the methods' default learning rates are given for (a 7-8B model)
WIDTH_SCALE = (0.25, 8.0)  # how far the width scaling may move a default


def default_learning_rate(method: Method, hidden_size: int | None) -> tuple[float, float]:
    """(learning rate, width factor): the method's default scaled by REFERENCE_WIDTH / hidden_size, as wider models
    take smaller steps (a 135M model with hidden size 576 gets 7.1x, a 32B one with 5120 gets 0.8x), within
    WIDTH_SCALE."""
    factor = REFERENCE_WIDTH / hidden_size if hidden_size else 1.0
    factor = min(max(factor, WIDTH_SCALE[0]), WIDTH_SCALE[1])
    return method.learning_rate * factor, factor
