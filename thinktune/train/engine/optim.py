"""AdamW over trainable parameters and a warmup + decay schedule (transformers' schedule functions)."""

from __future__ import annotations

import math

import torch
from transformers import get_scheduler

from thinktune.config import TrainConfig


def build_optimizer(params: list[tuple[str, torch.nn.Parameter]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over (name, parameter) pairs; no weight decay on biases and norms."""
    decay, no_decay = [], []
    for name, p in params:
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate, foreach=True)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.lr_scheduler]
    return get_scheduler(
        name, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * total_steps), num_training_steps=total_steps
    )


def total_optimizer_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * batches_per_epoch / cfg.gradient_accumulation_steps))
