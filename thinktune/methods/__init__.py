"""Tuning methods by name: each turns a loaded model into a trainable one. Add a method = one file + one line.

What a recipe calls, in order:
    model = apply_method(model, cfg, context)         # wrap / freeze; may profile data (ESFT)
    params = optimizer_parameters(model, cfg)          # every parameter the optimizer may ever update
    on_optimizer_step(model, cfg, step)                # after each optimizer step (progressive unfreezing)
    out = save_trained(model, cfg, run_dir)            # PEFT adapter dir, or changed tensors + config
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from thinktune.config import MethodConfig
from thinktune.methods.lora import apply_lora


@dataclass
class MethodContext:
    """What some methods need beyond the model: the tokenizer and training samples (ESFT profiles experts on them)."""

    tokenizer: Any = None
    samples: list = field(default_factory=list)


METHODS: dict[str, Callable[[PreTrainedModel, MethodConfig, MethodContext], PreTrainedModel]] = {
    "lora": lambda model, cfg, ctx: apply_lora(model, cfg),
}


def apply_method(model: PreTrainedModel, cfg: MethodConfig, context: MethodContext | None = None) -> PreTrainedModel:
    from thinktune.errors import ConfigError

    if cfg.name not in METHODS:
        raise ConfigError(f"method.name: '{cfg.name}' is not available (have: {', '.join(METHODS)})")
    return METHODS[cfg.name](model, cfg, context or MethodContext())


def optimizer_parameters(model: torch.nn.Module, cfg: MethodConfig) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def on_optimizer_step(model: torch.nn.Module, cfg: MethodConfig, step: int) -> None:
    """Called after every optimizer step; progressive unfreezing hooks in here."""


def save_trained(model: torch.nn.Module, cfg: MethodConfig, run_dir: Path) -> Path:
    """Save what training changed. PEFT methods: `run_dir/adapter` (loads with PeftModel.from_pretrained)."""
    out = run_dir / "adapter"
    model.save_pretrained(out)
    return out


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
