"""Train a chosen subset of the model's own weights (freeze), or all of them (full); optionally progressively.

    method: {name: freeze, trainable: top_layers, top_layers: 2}     # or attention | mlp | regex + trainable_regex
    method: {name: full}
    method: {name: freeze, trainable: top_layers, progressive_unfreeze_step: 50}

MoE routers stay frozen unless `train_router` (changing the routing early tends to destabilise fine-tuning).

Progressive unfreezing: the attention (and, for `full`, everything outside the MLPs) trains first; the MLP
parameters of the trained set unlock after optimizer step `progressive_unfreeze_step`. They are handed to the
optimizer from the start (`freeze_parameters`) with requires_grad off, so AdamW holds no state for them and skips
them until their first gradient. (Under multi-process DDP, parameters that start frozen are not all-reduced later.)

Saved: `run_dir/model/` — the trained tensors only (freeze), or a complete model (full).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import PreTrainedModel

from thinktune.config import MethodConfig
from thinktune.errors import ConfigError
from thinktune.methods.base import MethodContext, NamedParams, facts_of, method_state
from thinktune.methods.trained import save_changed_tensors, save_full_model
from thinktune.models.registry import is_mlp, select_trained


def check_freeze(cfg: MethodConfig) -> None:
    if cfg.name == "freeze" and cfg.trainable == "regex":
        if not cfg.trainable_regex:
            raise ConfigError("method.trainable=regex needs method.trainable_regex (e.g. 'layers\\.1[0-5]\\.')")
        try:
            re.compile(cfg.trainable_regex)
        except re.error as e:
            raise ConfigError(f"method.trainable_regex: invalid regular expression ({e})") from None
    if cfg.progressive_unfreeze_step and cfg.name == "freeze" and cfg.trainable == "mlp":
        raise ConfigError("method.progressive_unfreeze_step trains attention first; trainable=mlp has none")


def trained_names(model: torch.nn.Module, cfg: MethodConfig) -> list[str]:
    """Names of the parameters this method trains over the whole run."""
    picked = select_trained([n for n, _ in model.named_parameters()], facts_of(model), cfg)
    if not picked:
        raise ConfigError(f"method.trainable={cfg.trainable}: no parameter of this model matches")
    return picked


def apply_freeze(model: PreTrainedModel, cfg: MethodConfig, ctx: MethodContext) -> PreTrainedModel:
    check_freeze(cfg)
    facts = facts_of(model)
    trained = trained_names(model, cfg)
    later = {n for n in trained if is_mlp(facts, n)} if cfg.progressive_unfreeze_step else set()
    if cfg.progressive_unfreeze_step and (not later or len(later) == len(trained)):
        raise ConfigError(
            "method.progressive_unfreeze_step needs both attention and MLP parameters in the trained set "
            f"(method.trainable={cfg.trainable} gives {'no MLP' if not later else 'only MLP'} parameters)"
        )
    chosen = set(trained) - later
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    state = method_state(model)
    state["trained"] = trained
    state["pending"] = sorted(later)
    return model


def freeze_parameters(model: torch.nn.Module, cfg: MethodConfig) -> NamedParams:
    """Trainable now, plus those progressive unfreezing will unlock: the optimizer must know them all up front."""
    pending = set(method_state(model).get("pending", ()))
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad or n in pending]


def progressive_step(model: torch.nn.Module, cfg: MethodConfig, step: int) -> None:
    state = method_state(model)
    if not state.get("pending") or not cfg.progressive_unfreeze_step or step < cfg.progressive_unfreeze_step:
        return
    pending = set(state["pending"])
    for name, p in model.named_parameters():
        if name in pending:
            p.requires_grad_(True)
    state["pending"] = []


def save_freeze(model: torch.nn.Module, cfg: MethodConfig, run_dir: Path) -> Path:
    if cfg.name == "full":
        return save_full_model(model, cfg, run_dir)
    return save_changed_tensors(model, cfg, run_dir, method_state(model)["trained"])
