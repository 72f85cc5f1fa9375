"""Tuning methods by name: each turns a loaded model into a trainable one. Add a method = one file + one line.

What a recipe calls, in order:
    check_method_environment(cfg, train_cfg)           # before loading the model: config + machine (qlora: CUDA)
    check_method_model(model, cfg)                     # right after loading: the method fits the architecture
    model = apply_method(model, cfg, context)          # wrap / freeze; may profile data (ESFT)
    params = optimizer_parameters(model, cfg)          # every parameter the optimizer may ever update
    loss = loss + method_loss(model, cfg)              # when not None: a method's own penalty (AdaLoRA)
    on_optimizer_step(model, cfg, step)                # after optimizer.step(), before zero_grad()
    out = save_trained(model, cfg, run_dir)            # PEFT adapter dir, or changed tensors + config
    model = load_trained(base, out)                    # put it back onto a fresh base model (runs.py)

Families: lora.py (lora), qlora.py, adalora.py, prompts.py (prompt_tuning, p_tuning, prefix_tuning), ia3.py,
freeze.py (freeze, full, progressive unfreezing), esft.py (+ expert_usage.py). Saving: trained.py; the run
directory layout and loading it back: thinktune/runs.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from thinktune.config import MethodConfig, TrainConfig
from thinktune.errors import ConfigError
from thinktune.methods.adalora import adalora_loss, adalora_ranks, adalora_step, apply_adalora, save_adalora
from thinktune.methods.base import Method, MethodContext, facts_of, method_state, require_moe
from thinktune.methods.esft import apply_esft, esft_step, save_esft
from thinktune.methods.freeze import apply_freeze, check_freeze, freeze_parameters, progressive_step, save_freeze
from thinktune.methods.ia3 import apply_ia3
from thinktune.methods.lora import apply_lora, check_lora, save_lora
from thinktune.methods.prompts import apply_prompt_method
from thinktune.methods.qlora import apply_qlora, check_qlora
from thinktune.runs import load_trained, merge_trained

__all__ = [
    "METHODS",
    "Method",
    "MethodContext",
    "adalora_ranks",
    "apply_method",
    "check_method_environment",
    "check_method_model",
    "count_parameters",
    "load_trained",
    "merge_trained",
    "method_loss",
    "method_of",
    "on_optimizer_step",
    "optimizer_parameters",
    "save_trained",
]

# Default peak learning rates at a 4096-wide model (base.default_learning_rate scales them to the model): LoRA's
# 1.4e-4 lies between ms-swift's 1e-4 and the QLoRA paper's / Unsloth's 2e-4 and gives the quickstart (SmolLM2,
# hidden size 576) its measured 1e-3; IA3's 3e-3 its paper's; soft prompts train a few embedding rows and take
# PEFT's documented 3e-2 (prompt tuning) / 1e-2 (prefix tuning); P-tuning's MLP prompt encoder takes 1e-3 (at 1e-2,
# 7.1e-2 on SmolLM2, its first gradient norm was 14 and the quickstart's loss rose from 1.35 to 2.1); AdaLoRA
# starts its singular values at zero and needs a larger step than LoRA; methods
# that update every weight (full, ESFT's experts) take full fine-tuning's 1e-5; freeze, a few top layers, takes
# LLaMA-Factory's 1e-4 for it.
_freeze = dict(check=check_freeze, parameters=freeze_parameters, on_step=progressive_step, save=save_freeze)

METHODS: dict[str, Method] = {
    "lora": Method(apply_lora, check=check_lora, save=save_lora, learning_rate=1.4e-4),
    "qlora": Method(apply_qlora, check=check_qlora, save=save_lora, learning_rate=1.4e-4),
    "adalora": Method(apply_adalora, on_step=adalora_step, loss=adalora_loss, save=save_adalora, learning_rate=5e-4),
    "prompt_tuning": Method(apply_prompt_method, learning_rate=3e-2),
    "p_tuning": Method(apply_prompt_method, learning_rate=1e-3),
    "prefix_tuning": Method(apply_prompt_method, learning_rate=1e-2),
    "ia3": Method(apply_ia3, learning_rate=3e-3),
    "freeze": Method(apply_freeze, **_freeze, learning_rate=1e-4),
    "full": Method(apply_freeze, **_freeze, learning_rate=1e-5),
    "esft": Method(apply_esft, on_step=esft_step, save=save_esft, learning_rate=1e-5),
}

PROGRESSIVE = ("freeze", "full")
SOFT_PROMPTS = ("prompt_tuning", "p_tuning", "prefix_tuning")
VISION_METHODS = ("lora", "freeze", "full")  # method.vision: the projector / vision encoder trained with them


def method_of(cfg: MethodConfig) -> Method:
    if cfg.name not in METHODS:
        raise ConfigError(f"method.name: '{cfg.name}' is not available (have: {', '.join(METHODS)})")
    return METHODS[cfg.name]


def check_method_environment(cfg: MethodConfig, train: TrainConfig | None = None) -> None:
    """Fail in one line, before any weights load, when the config or this machine cannot run the method."""
    method = method_of(cfg)
    if cfg.name == "esft" and train is not None and train.weight_decay > 0:
        raise ConfigError(
            "method.name=esft needs train.weight_decay=0: AdamW's decoupled decay scales whole fused expert tensors, "
            f"unselected experts included (got {train.weight_decay})"
        )
    if cfg.progressive_unfreeze_step and cfg.name not in PROGRESSIVE:
        raise ConfigError(f"method.progressive_unfreeze_step applies to method.name freeze or full, not '{cfg.name}'")
    if cfg.expert_lora and cfg.name not in ("lora", "qlora"):
        raise ConfigError(f"method.expert_lora applies to method.name lora or qlora, not '{cfg.name}'")
    if cfg.vision != "frozen" and cfg.name not in VISION_METHODS:
        raise ConfigError(
            f"method.vision={cfg.vision} applies to method.name {', '.join(VISION_METHODS)}, not '{cfg.name}'"
        )
    if cfg.train_router and cfg.name in SOFT_PROMPTS:
        raise ConfigError(f"method.train_router does not apply to '{cfg.name}' (soft prompts leave the model frozen)")
    if method.check:
        method.check(cfg)


def check_method_model(model: PreTrainedModel, cfg: MethodConfig) -> None:
    """Right after loading, before any evaluation or data work: the method fits this architecture (ESFT and
    expert LoRA need a mixture-of-experts model)."""
    if cfg.name == "esft":
        require_moe(model, "method.name=esft")
    if cfg.expert_lora:
        require_moe(model, "method.expert_lora")
    if cfg.vision != "frozen" and not (facts_of(model) and facts_of(model).towers):
        model_type = getattr(getattr(model, "config", None), "model_type", "?")
        raise ConfigError(f"method.vision={cfg.vision}: '{model_type}' has no vision encoder thinktune knows")


def apply_method(model: PreTrainedModel, cfg: MethodConfig, context: MethodContext | None = None) -> torch.nn.Module:
    check_method_environment(cfg)
    return method_of(cfg).apply(model, cfg, context or MethodContext())


def optimizer_parameters(model: torch.nn.Module, cfg: MethodConfig) -> list[tuple[str, torch.nn.Parameter]]:
    """Every (name, parameter) the optimizer may ever update, including ones a method unlocks later."""
    return method_of(cfg).parameters(model, cfg)


def method_loss(model: torch.nn.Module, cfg: MethodConfig) -> torch.Tensor | None:
    """A term the method adds to the training loss (AdaLoRA's orthogonality penalty), or None."""
    method = method_of(cfg)
    return method.loss(model, cfg) if method.loss else None


def on_optimizer_step(model: torch.nn.Module, cfg: MethodConfig, step: int) -> None:
    """Called after every optimizer.step() and before zero_grad(): progressive unfreezing, AdaLoRA's rank budget
    (reads the gradients), ESFT's frozen-expert check. `step` counts optimizer steps from 1."""
    method = method_of(cfg)
    if method.on_step:
        method.on_step(model, cfg, step)


def save_trained(model: torch.nn.Module, cfg: MethodConfig, run_dir: Path) -> Path:
    """Save what training changed: PEFT methods `run_dir/adapter`, the others `run_dir/model` (see trained.py)."""
    return method_of(cfg).save(model, cfg, Path(run_dir))


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total): parameters the method trains over the run (including ones unlocked later, excluding
    the masked expert rows of ESFT), and all parameters."""
    state = method_state(model)
    pending = set(state.get("pending", ()))
    trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad or n in pending)
    total = sum(p.numel() for p in model.parameters())
    return trainable - state.get("masked_elements", 0), total
