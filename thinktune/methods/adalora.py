"""AdaLoRA (Zhang et al. 2023): SVD-shaped LoRA whose rank budget moves to the modules that matter.

    method: {name: adalora, r: 16, target_r: 8}

Every module starts at rank `r`; a cubic schedule shrinks the total budget to `target_r` per module on average,
pruning the singular values with the lowest sensitivity |w · ∂L/∂w|. That needs, each optimizer step, the gradients
*after* `optimizer.step()` and before they are zeroed (`update_and_allocate`), the number of steps of the run
(`MethodContext.total_steps`), and the orthogonality penalty on P and Q added to the loss (`adalora_loss`).

The final ranks go into `ranks.json` next to the adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import AdaLoraConfig, PeftModel
from transformers import PreTrainedModel

from thinktune.config import MethodConfig
from thinktune.methods.base import MethodContext, facts_of, method_state
from thinktune.methods.lora import lora_targets, router_modules, wrap
from thinktune.runs import ADAPTER

ORTH_REG_WEIGHT = 0.5  # PEFT's default γ for ‖PᵀP − I‖ + ‖QQᵀ − I‖


def schedule(total_steps: int) -> dict[str, int]:
    """Warm up on the full budget for 10% of the run, prune until 70%, then train the final ranks (paper §4)."""
    tinit = total_steps // 10
    tfinal = (total_steps * 3) // 10
    if total_steps - tinit - tfinal < 1:
        tinit, tfinal = 0, 0
    return {"total_step": total_steps, "tinit": tinit, "tfinal": tfinal, "deltaT": max(1, total_steps // 20)}


def apply_adalora(model: PreTrainedModel, cfg: MethodConfig, ctx: MethodContext) -> PeftModel:
    # Without the run length, assume one epoch at batch size 1: the budget then shrinks more slowly than planned.
    total = ctx.total_steps or max(1, len(ctx.samples))
    peft_cfg = AdaLoraConfig(
        init_r=cfg.r,
        target_r=min(cfg.target_r, cfg.r),
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=lora_targets(model, cfg),
        orth_reg_weight=ORTH_REG_WEIGHT,
        modules_to_save=router_modules(facts_of(model), cfg),
        task_type="CAUSAL_LM",
        **schedule(total),
    )
    peft_model = wrap(model, peft_cfg, "AdaLoRA")
    state = method_state(peft_model)
    state["adalora_grads"] = {}
    for name, p in peft_model.named_parameters():
        if p.requires_grad and "lora_" in name:
            # Keep a reference to each gradient so the budget can still be computed if the caller has already
            # zeroed them with set_to_none (the tensor itself survives; nothing is copied).
            p.register_post_accumulate_grad_hook(lambda t, n=name: state["adalora_grads"].__setitem__(n, t.grad))
    return peft_model


def adalora_step(model: PeftModel, cfg: MethodConfig, step: int) -> None:
    """PEFT's update_and_allocate with the step's gradients (restored where the caller already dropped them)."""
    stash = method_state(model).get("adalora_grads", {})
    restored = []
    for name, p in model.named_parameters():
        if p.grad is None and name in stash:
            p.grad = stash[name]
            restored.append(p)
    try:
        model.base_model.update_and_allocate(step)
    finally:
        for p in restored:
            p.grad = None
        stash.clear()


def adalora_loss(model: PeftModel, cfg: MethodConfig) -> torch.Tensor | None:
    """γ · mean ‖PᵀP − I‖_F over the adapted modules (what AdaLoraModel.forward adds when given labels)."""
    terms = []
    for name, p in model.named_parameters():
        if p.requires_grad and ("lora_A" in name or "lora_B" in name):
            cov = p @ p.T if "lora_A" in name else p.T @ p
            eye = torch.eye(*cov.size(), device=cov.device, dtype=cov.dtype)
            terms.append(torch.norm(cov - eye, p="fro"))
    return ORTH_REG_WEIGHT * torch.stack(terms).mean() if terms else None


def adalora_ranks(model: PeftModel) -> dict[str, int]:
    """Current rank of every adapted module: singular values kept by the last budget allocation."""
    adapter = model.active_adapter
    pattern = model.peft_config[adapter].rank_pattern or {}
    ranks = {}
    for name, p in model.base_model.model.named_parameters():
        if f"lora_E.{adapter}" not in name:
            continue
        module = name.replace(f".lora_E.{adapter}", "")
        kept = pattern.get(name, pattern.get(f"{module}.lora_E"))  # PEFT drops the adapter name when saving
        ranks[module] = int(sum(kept)) if kept is not None else int(p.shape[0])
    return ranks


def save_adalora(model: PeftModel, cfg: MethodConfig, run_dir: Path) -> Path:
    out = run_dir / ADAPTER
    ranks = adalora_ranks(model)
    model.save_pretrained(out)
    (out / "ranks.json").write_text(json.dumps(ranks, indent=2))
    return out
