"""Soft prompts through PEFT: prompt tuning (Lester et al. 2021), P-tuning (Liu et al. 2021), prefix tuning
(Li & Liang 2021). The model stays frozen; only `num_virtual_tokens` learned vectors (per layer for prefix tuning)
are trained.

    method: {name: prompt_tuning|p_tuning|prefix_tuning, num_virtual_tokens: 20}

Prompt and P-tuning prepend the virtual tokens to the input, so PEFT returns logits for them too; a forward hook
drops those positions again, so `model(input_ids).logits` lines up with `input_ids` as for every other method (the
recipe's loss shifts logits against labels). The hook lives in runs.py, whose `load_trained` adds it to a reloaded
adapter too.
"""

from __future__ import annotations

from peft import PeftModel, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig
from transformers import PreTrainedModel

from thinktune.config import MethodConfig
from thinktune.errors import ConfigError
from thinktune.methods.base import MethodContext, facts_of
from thinktune.methods.lora import wrap
from thinktune.runs import align_prompt_logits


def prompt_config(model: PreTrainedModel, cfg: MethodConfig):
    n = cfg.num_virtual_tokens
    if cfg.name == "prompt_tuning":
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n)
    if cfg.name == "p_tuning":
        # The prompt encoder (an MLP over the virtual tokens) gets a width tied to the model, not PEFT's 768 default.
        return PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=n, encoder_hidden_size=model.config.hidden_size
        )
    facts = facts_of(model)
    if facts is not None and not facts.prefix_tuning:
        raise ConfigError(
            f"method.name=prefix_tuning does not support '{model.config.model_type}' (its attention cache is not "
            "per-head keys and values); use prompt_tuning or p_tuning"
        )
    return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n)


def apply_prompt_method(model: PreTrainedModel, cfg: MethodConfig, ctx: MethodContext) -> PeftModel:
    return align_prompt_logits(wrap(model, prompt_config(model, cfg), cfg.name))
