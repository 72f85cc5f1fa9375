"""LoRA (Hu et al. 2021) through PEFT, with per-architecture default targets from the models registry."""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from thinktune.config import MethodConfig
from thinktune.errors import ConfigError
from thinktune.models.registry import arch_facts


def lora_targets(model: PreTrainedModel, cfg: MethodConfig) -> list[str] | str:
    if cfg.target_modules == "all-linear":
        return "all-linear"
    if cfg.target_modules == "auto":
        facts = arch_facts(model.config.model_type)
        if facts is None:
            return "all-linear"
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        return [t for t in facts.lora_targets if t in present]
    return list(cfg.target_modules)


def apply_lora(model: PreTrainedModel, cfg: MethodConfig) -> PeftModel:
    peft_cfg = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=lora_targets(model, cfg),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as e:  # PEFT's own message says what is wrong (no target matched, dropout on fused experts)
        raise ConfigError(f"method: LoRA cannot be applied: {str(e).splitlines()[0]}") from None
