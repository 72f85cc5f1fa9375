"""IA³ (Liu et al. 2022): learned per-channel scaling of keys, values and the feed-forward input, through PEFT.

    method: {name: ia3, target_modules: auto}

The fewest trainable parameters of any method here (one vector per adapted projection). Default targets come from
the models registry; `target_modules` overrides them (feed-forward modules are then the `down_proj`s among them).
"""

from __future__ import annotations

from peft import IA3Config, PeftModel
from transformers import PreTrainedModel

from thinktune.config import MethodConfig
from thinktune.methods.base import MethodContext, facts_of
from thinktune.methods.lora import router_modules, wrap


def ia3_config(model: PreTrainedModel, cfg: MethodConfig) -> IA3Config:
    facts = facts_of(model)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if cfg.target_modules == "auto" and facts is not None:
        targets = [t for t in facts.ia3_targets if t in present]
        feedforward = [t for t in facts.ia3_feedforward if t in targets]
    elif cfg.target_modules == "auto":
        targets = feedforward = None  # PEFT's own defaults for the architecture
    elif cfg.target_modules == "all-linear":
        targets, feedforward = "all-linear", None
    else:
        targets = list(cfg.target_modules)
        feedforward = [t for t in targets if t == "down_proj"]
    return IA3Config(
        task_type="CAUSAL_LM",
        target_modules=targets,
        feedforward_modules=feedforward,
        modules_to_save=router_modules(facts, cfg),
    )


def apply_ia3(model: PreTrainedModel, cfg: MethodConfig, ctx: MethodContext) -> PeftModel:
    return wrap(model, ia3_config(model, cfg), "IA3")
