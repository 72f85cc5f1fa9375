"""Tuning methods by name: each turns a loaded model into a trainable one. Add a method = one file + one line."""

from __future__ import annotations

from collections.abc import Callable

from transformers import PreTrainedModel

from thinktune.config import MethodConfig
from thinktune.methods.lora import apply_lora

METHODS: dict[str, Callable[[PreTrainedModel, MethodConfig], PreTrainedModel]] = {
    "lora": apply_lora,
}


def apply_method(model: PreTrainedModel, cfg: MethodConfig) -> PreTrainedModel:
    return METHODS[cfg.name](model, cfg)


def count_parameters(model: PreTrainedModel) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
