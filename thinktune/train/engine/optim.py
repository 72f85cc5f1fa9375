"""AdamW over trainable parameters and a warmup + decay schedule (transformers' schedule functions)."""

from __future__ import annotations

import math

import torch
from transformers import get_scheduler

from thinktune.config import TrainConfig

# Devices with a fused AdamW kernel in torch >= 2.4 (CPU since 2.4, CUDA since 2.0, MPS since 2.5).
FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")


def fused_supported(params: list[torch.nn.Parameter]) -> bool:
    """torch's fused AdamW kernel exists for floating-point tensors on these devices (meta, for one, has none)."""
    return all(p.device.type in FUSED_DEVICES and torch.is_floating_point(p) for p in params)


def adamw_kernel(params: list[torch.nn.Parameter], optimizer: str) -> dict[str, bool]:
    """`fused=True` for train.optimizer=adamw_fused where the parameters allow it, else `foreach=True`."""
    if optimizer == "adamw_fused" and fused_supported(params):
        return {"fused": True}
    return {"foreach": True}


def build_optimizer(
    params: list[tuple[str, torch.nn.Parameter]], cfg: TrainConfig, learning_rate: float | None = None
) -> torch.optim.Optimizer:
    """AdamW over (name, parameter) pairs at `learning_rate` (default: cfg.learning_rate); no weight decay on biases
    and norms. `cfg.optimizer` picks the kernel."""
    lr = learning_rate or cfg.learning_rate
    if lr is None:
        raise ValueError("build_optimizer: no learning rate (train.learning_rate unset and none resolved)")
    decay, no_decay = [], []
    for name, p in params:
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kernel = adamw_kernel(decay + no_decay, cfg.optimizer)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, **kernel)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.lr_scheduler]
    return get_scheduler(
        name, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * total_steps), num_training_steps=total_steps
    )


def total_optimizer_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * batches_per_epoch / cfg.gradient_accumulation_steps))
