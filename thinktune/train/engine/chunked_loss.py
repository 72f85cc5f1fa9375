"""Causal-LM cross-entropy from final hidden states: the LM head runs on trained positions only, a chunk at a time.

The usual path, `model(...).logits` then cross-entropy, materialises a [batch × length × vocab] float32 tensor (plus
its log-softmax and its gradient): 8 × 512 × 49,152 × 4 bytes = 0.8 GB per copy for SmolLM2, and the head's matmul
runs on prompt and padding positions that are never trained. Here the trained positions (after the causal shift) are
gathered first, then the head is applied to `chunk_size` rows at a time:

- a plain `nn.Linear` head goes through `_LinearCrossEntropy`, which computes each chunk's loss *and* its gradient in
  the forward pass (softmax − target, the closed form of ∂CE/∂logits) and keeps only the gradient w.r.t. the hidden
  states ([N × hidden]) and the head weight; no chunk's logits survive the chunk and nothing is recomputed
  (the "fused linear cross-entropy" of Liger-Kernel, Hsu et al. 2024, §3.2);
- any other head module (a LoRA-wrapped head, an offloaded one) is called per chunk under `torch.utils.checkpoint`,
  so backward recomputes that chunk's logits instead of keeping them.

`hidden_and_head(model)` finds the decoder and the head of a causal LM (plain, PEFT-wrapped, compiled or DDP-wrapped)
and `HiddenAndHead.hidden_states` runs the model's own forward (PEFT hooks, DDP gradient sync, compiled regions all
apply) with `logits_to_keep=1`, capturing the decoder's last hidden state.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.utils.checkpoint import checkpoint

from thinktune.data.render import IGNORE
from thinktune.errors import ConfigError


def trained_hidden(hidden_states: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden [N, H], targets [N]) at the trained positions: the hidden state at t predicts the label at t + 1."""
    labels = labels[:, 1:].to(hidden_states.device)
    mask = labels != IGNORE
    return hidden_states[:, :-1][mask], labels[mask]


class _LinearCrossEntropy(torch.autograd.Function):
    """mean CE(h @ Wᵀ + b, y) over N rows, chunked; gradients computed in forward, scaled by grad_output in backward."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk_size: int, label_smoothing: float):
        n, vocab = h.shape[0], weight.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        w = weight.to(h.dtype) if need_h else None  # no copy unless autocast made h lower precision than the weight
        for start in range(0, n, chunk_size):
            hc, yc = h[start : start + chunk_size], targets[start : start + chunk_size]
            logits = F.linear(hc, weight, bias).float()
            lse = torch.logsumexp(logits, dim=-1)
            nll = lse - logits.gather(1, yc[:, None])[:, 0]
            if label_smoothing:
                # PyTorch's definition: target q = (1 − ε)·onehot + ε/V, loss = −Σ q log p.
                nll = (1 - label_smoothing) * nll + label_smoothing * (lse - logits.mean(dim=-1))
            total += nll.sum()
            if not (need_h or need_w or need_b):
                continue
            # ∂CE/∂logits = softmax − q, written over the logits buffer (one [chunk × V] tensor alive at a time).
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(len(yc), device=grad.device), yc] -= 1 - label_smoothing
            if label_smoothing:
                grad -= label_smoothing / vocab
            grad /= n
            if need_b:
                grad_b += grad.sum(0)
            g = grad.to(hc.dtype)
            with torch.autocast(h.device.type, enabled=False):  # matmuls in the hidden states' dtype, as autocast would
                if need_h:
                    grad_h[start : start + chunk_size] = g @ w
                if need_w:
                    if g.dtype == torch.float32:
                        grad_w.addmm_(g.t(), hc)
                    else:
                        grad_w += (g.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.weight_dtype = weight.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad_out.float()
        return (
            grad_h * scale.to(grad_h.dtype) if grad_h is not None else None,
            (grad_w * scale).to(ctx.weight_dtype) if grad_w is not None else None,
            (grad_b * scale).to(ctx.weight_dtype) if grad_b is not None else None,
            None,
            None,
            None,
        )


def _chunk_ce_sum(head: nn.Module, h: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return F.cross_entropy(head(h).float(), y, reduction="sum", label_smoothing=label_smoothing)


def _is_plain_linear(head: nn.Module) -> bool:
    # Exact type: subclasses (bitsandbytes' Linear8bitLt, ...) keep other weights than `weight` means, and hooks
    # (accelerate offload) must run; both go through the generic path.
    return (
        type(head) is nn.Linear
        and not head._forward_hooks
        and not head._forward_pre_hooks
        and not hasattr(head, "_hf_hook")
    )


def lm_loss_from_hidden(
    hidden_states: torch.Tensor,
    lm_head: nn.Module,
    labels: torch.Tensor,
    chunk_size: int,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, int]:
    """(mean next-token CE over trained positions, number of trained positions), never holding more than
    `chunk_size` × vocab logits; equals `causal_lm_loss(lm_head(hidden_states), labels)` and its gradients."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    h, y = trained_hidden(hidden_states, labels)
    n = len(y)
    if n == 0:  # stays in the graph, as losses._zero: DDP expects every rank to backward
        return hidden_states.sum() * 0.0, 0
    if _is_plain_linear(lm_head) and torch.is_grad_enabled():
        return _LinearCrossEntropy.apply(h, lm_head.weight, lm_head.bias, y, chunk_size, label_smoothing), n
    total = hidden_states.new_zeros((), dtype=torch.float32)
    grad = torch.is_grad_enabled()
    for start in range(0, n, chunk_size):
        hc, yc = h[start : start + chunk_size], y[start : start + chunk_size]
        if grad:
            total = total + checkpoint(_chunk_ce_sum, lm_head, hc, yc, label_smoothing, use_reentrant=False)
        else:
            total = total + _chunk_ce_sum(lm_head, hc, yc, label_smoothing)
    return total / n, n


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers CausalLM inside DDP / torch.compile / PEFT wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel) or type(model).__name__ == "DataParallel":
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
            model = model.get_base_model()
        else:
            return model


def is_prompt_learning(model: nn.Module) -> bool:
    """PEFT prompt/prefix/p-tuning prepend virtual tokens in PeftModel.forward: hidden states no longer line up with
    the labels, so those methods keep the logits path."""
    while not hasattr(model, "peft_config"):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return False
        model = inner
    active = getattr(model, "active_adapter", None)
    cfg = model.peft_config.get(active) if isinstance(active, str) else None
    return bool(getattr(cfg, "is_prompt_learning", False))


# Config fields of transformers models whose logits are not lm_head(hidden): Gemma 2/3 soft-capping, Cohere's
# logit_scale, Granite's logits_scaling.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


@dataclass
class HiddenAndHead:
    """Where a causal LM's final hidden states come from (`decoder`'s `last_hidden_state`) and its `lm_head`."""

    decoder: nn.Module
    lm_head: nn.Module
    model_type: str
    _checked: bool = False

    def hidden_states(self, model: nn.Module, **inputs: Any) -> torch.Tensor:
        """Final hidden states [B, T, H] from `model(**inputs)` (the wrapper the loop holds), with the head applied to
        the last position only. On the first call, checks that the model's logits are `lm_head(hidden)` (models that
        scale or soft-cap logits after the head are refused)."""
        captured: list[torch.Tensor] = []

        def grab(_module, _args, output):
            captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

        handle = self.decoder.register_forward_hook(grab)
        try:
            out = model(**inputs, logits_to_keep=1)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"expected one decoder call per forward, saw {len(captured)}")
        hidden = captured[0]
        if isinstance(model, FSDPModule) and torch.is_grad_enabled():
            # FSDP2 starts its root's backward (gradient reduce-scatter of the root's parameters) from the outputs of
            # the root's forward: keep the logits in the graph, with no weight in the loss
            hidden = hidden + out.logits.sum() * 0.0
        if not self._checked and _is_plain_linear(self.lm_head):  # other heads may hold dropout: no exact check
            with torch.no_grad():
                expected = self.lm_head(hidden[:, -1:]).float()
                if not torch.allclose(out.logits.float(), expected, rtol=1e-3, atol=1e-3):
                    raise ConfigError(
                        f"train.loss_chunk_size: {self.model_type} transforms its logits after the LM head "
                        "(scaling or soft-capping); unset loss_chunk_size for this model"
                    )
            self._checked = True
        return hidden


def hidden_and_head(model: nn.Module) -> HiddenAndHead | None:
    """Decoder + LM head of a transformers causal LM (Llama, Qwen3, Qwen3-MoE, DeepSeek-V3, ...), or None when
    the chunked loss cannot apply (PEFT prompt learning, no `logits_to_keep` argument, no output embeddings)."""
    if is_prompt_learning(model):
        return None
    lm = unwrap_causal_lm(model)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if head is None or "logits_to_keep" not in inspect.signature(lm.forward).parameters:
        return None
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else getattr(lm, "model", None)
    if decoder is None or decoder is lm:
        return None
    config = getattr(lm, "config", None)
    if any(getattr(config, k, None) not in (None, 1, 1.0) for k in LOGIT_TRANSFORMS):
        raise ConfigError(
            f"train.loss_chunk_size: {config.model_type} transforms its logits after the LM head "
            f"({', '.join(k for k in LOGIT_TRANSFORMS if getattr(config, k, None) not in (None, 1, 1.0))}); "
            "unset loss_chunk_size for this model"
        )
    return HiddenAndHead(decoder, head, getattr(lm.config, "model_type", type(lm).__name__))
