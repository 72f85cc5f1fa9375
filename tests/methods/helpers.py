"""A few optimizer steps the way the SFT recipe drives a method, on a batch the model can memorise."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from thinktune.config import MethodConfig, TrainConfig
from thinktune.data.render import TokenizedSample
from thinktune.methods import (
    MethodContext,
    apply_method,
    method_loss,
    on_optimizer_step,
    optimizer_parameters,
)
from thinktune.train.engine.losses import causal_lm_loss
from thinktune.train.engine.optim import build_optimizer

TEXTS = [
    "<|im_start|>user\n3 + 4?<|im_end|>\n<|im_start|>assistant\n<think>\n3 + 4 = 7\n</think>\n\n"
    "The answer is \\boxed{7}.<|im_end|>\n",
    "<|im_start|>user\nTom has 5 apples. He buys 3 more apples.<|im_end|>\n<|im_start|>assistant\n"
    "So the answer is \\boxed{8}.<|im_end|>\n",
]

# Learning rates that move each family visibly in 3 steps on the tiny models.
LR = {"prompt_tuning": 0.1, "p_tuning": 0.01, "prefix_tuning": 0.05, "ia3": 0.1, "full": 3e-3, "freeze": 3e-3}


def method(name: str, **kw) -> MethodConfig:
    return MethodConfig(name=name, **kw)


def memorisable_batch(tokenizer) -> dict[str, torch.Tensor]:
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def samples_of(batch) -> list[TokenizedSample]:
    out = []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
        n = int(mask.sum())
        out.append(TokenizedSample(ids[:n].tolist(), ids[:n].tolist()))
    return out


def lm_loss(model, batch) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return causal_lm_loss(logits, batch["labels"])


@torch.no_grad()
def eval_logits(model, batch) -> torch.Tensor:
    model.eval()
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def load(model_dir) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(model_dir)


def train_steps(model, cfg: MethodConfig, batch, steps: int = 3, lr: float | None = None, weight_decay: float = 0.0):
    """apply → optimizer over optimizer_parameters → steps in the recipe's order. Returns (model, eval loss before,
    eval loss after)."""
    torch.manual_seed(0)
    model = apply_method(model, cfg, MethodContext(samples=samples_of(batch), total_steps=steps))
    with torch.no_grad():
        before = float(lm_loss(model.eval(), batch))
    params = optimizer_parameters(model, cfg)
    optimizer = build_optimizer(
        params, TrainConfig(learning_rate=lr or LR.get(cfg.name, 1e-2), weight_decay=weight_decay)
    )
    model.train()
    for step in range(1, steps + 1):
        loss = lm_loss(model, batch)
        extra = method_loss(model, cfg)
        if extra is not None:
            loss = loss + extra
        loss.backward()
        optimizer.step()
        on_optimizer_step(model, cfg, step)
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        after = float(lm_loss(model.eval(), batch))
    return model, before, after
