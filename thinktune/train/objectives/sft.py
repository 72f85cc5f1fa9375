"""The SFT objective: next-token cross-entropy over trained positions (label smoothing), optionally mixed with logit
distillation and the auxiliary unlikelihood / contrastive terms (engine/losses.py `combined_loss`); a token mean.

Fast path, exact: with `train.loss_chunk_size` a cross-entropy-only run computes the loss from the hidden states
chunk by chunk (engine/chunked_loss.py), never holding the batch × length × vocabulary logits. Packed batches
(`train.packing`) call the model with position ids that restart at every sample instead of the attention mask.
"""

from __future__ import annotations

import torch
from torch import nn

from thinktune.config import TrainConfig
from thinktune.errors import ConfigError
from thinktune.models.registry import arch_facts
from thinktune.train.engine.chunked_loss import (
    HiddenAndHead,
    hidden_and_head,
    is_prompt_learning,
    lm_loss_from_hidden,
    unwrap_causal_lm,
)
from thinktune.train.engine.loop import Batch, LossFn, trained_tokens
from thinktune.train.engine.losses import combined_loss
from thinktune.train.engine.speed import model_inputs
from thinktune.train.objectives import Objective

AUTO_CHUNK = 1024  # rows of the chunked head when train.loss_chunk_size is auto


def chunked_loss_applies(cfg: TrainConfig, teacher: nn.Module | None) -> bool:
    """The chunked head computes cross-entropy only; distillation and the auxiliary losses need full logits rows."""
    return bool(cfg.loss_chunk_size) and teacher is None and not cfg.unlikelihood_weight and not cfg.contrastive_weight


def takes_position_ids(model: nn.Module) -> bool:
    """Whether packing's 1-D position ids (restarting per sample) are what the model uses (registry.py)."""
    facts = arch_facts(getattr(getattr(unwrap_causal_lm(model), "config", None), "model_type", ""))
    return facts is None or facts.position_ids


def resolve_levers(cfg: TrainConfig, model: nn.Module, teacher: nn.Module | None = None) -> TrainConfig:
    """`cfg` with the `auto` speed levers decided for this model: packing on unless the method prepends virtual
    tokens; the chunked head (1024 rows) where it applies — cross-entropy only, an LM head that does not transform
    its logits — else the full-logits loss. Values the user gave are kept (and refused where they cannot apply)."""
    own_positions = not takes_position_ids(model)
    if cfg.packing is True and own_positions:
        raise ConfigError(
            f"train.packing: {unwrap_causal_lm(model).config.model_type} computes its own (multimodal) position ids, "
            "which packed rows would cross; set it false"
        )
    packing = cfg.packing if cfg.packing != "auto" else not (is_prompt_learning(model) or own_positions)
    chunk = cfg.loss_chunk_size
    if chunk == "auto":
        chunk = None
        if chunked_loss_applies(cfg, teacher):
            try:
                chunk = AUTO_CHUNK if hidden_and_head(model) is not None else None
            except ConfigError:  # the head transforms its logits (soft-capping): the plain loss is the exact one
                chunk = None
    return cfg.model_copy(update={"packing": packing, "loss_chunk_size": chunk})


def build_sft_loss_fn(model: nn.Module, cfg: TrainConfig, teacher: nn.Module | None = None) -> LossFn:
    """loss_fn(model, batch) -> (token-mean loss, parts).

    Levers off: `model(input_ids, attention_mask).logits` → `combined_loss`. `cfg.loss_chunk_size` (CE-only runs on
    models where it applies): hidden states → `lm_loss_from_hidden`. Packed batches call the model with position ids.
    """
    cfg = resolve_levers(cfg, model, teacher)
    if cfg.packing and is_prompt_learning(model):
        # PEFT drops position_ids for virtual-token methods, and without them packed samples would see each other.
        raise ConfigError("train.packing does not work with prompt_tuning / p_tuning / prefix_tuning; set it false")
    head: HiddenAndHead | None = hidden_and_head(model) if chunked_loss_applies(cfg, teacher) else None

    def loss_fn(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = model_inputs(batch)
        if head is not None:
            hidden = head.hidden_states(model, **inputs)
            loss, _ = lm_loss_from_hidden(
                hidden, head.lm_head, batch["labels"], cfg.loss_chunk_size, cfg.label_smoothing
            )
            value = loss.item()
            return loss, {"ce": value, "loss": value}
        logits = model(**inputs).logits
        teacher_logits = None
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(**inputs).logits
        return combined_loss(logits, batch, cfg, teacher_logits)

    return loss_fn


def sft_objective(model: nn.Module, cfg: TrainConfig, teacher: nn.Module | None = None) -> Objective:
    return Objective(build_sft_loss_fn(model, cfg, teacher), trained_tokens, "token")
