"""ESFT, Expert-Specialized Fine-Tuning (Wang et al. 2024): train only the routed experts the task uses.

    method: {name: esft, esft_threshold: 0.2, esft_score: gate}     # gate-score share, or token-selection ratio

1. Profile routing on the training samples (`expert_usage`, up to 64 samples).
2. Per MoE layer keep the fewest experts whose share adds up to `esft_threshold` (§3.2).
3. Freeze everything else: attention, embeddings, norms, shared experts, dense layers and the router (unless
   `train_router`). Routed experts are fused (E, …) tensors in transformers 5, so the tensors stay trainable and a
   gradient hook zeroes the rows of unselected experts. With an exactly-zero gradient from the first step AdamW
   leaves those rows bit-identical (both moments stay 0, the update is 0). AdamW's *decoupled weight decay* would
   still shrink them, since it scales the whole tensor; `esft_step` checks a fingerprint of the unselected rows
   after every optimizer step and stops the run if they moved (set `train.weight_decay: 0`).

Saved: `run_dir/model/` with `experts.json` (selection and shares) and `trained.safetensors` holding only the
selected experts' rows (`rows` in `thinktune_method.json`); `runs.load_trained` writes them back into a base model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedModel

from thinktune.config import MethodConfig
from thinktune.errors import ConfigError
from thinktune.methods.base import MethodContext, method_state, require_moe
from thinktune.methods.expert_usage import expert_usage, moe_layers, select_experts
from thinktune.methods.trained import save_changed_tensors
from thinktune.models.registry import is_router

FINGERPRINT_ELEMENTS = 32  # per unselected expert row: any decay or update changes these


def _fingerprint(p: torch.Tensor, frozen_rows: list[int]) -> torch.Tensor:
    """A few elements of each frozen expert row, on the CPU (the model moves to its device after apply)."""
    return torch.stack([p.detach()[e].reshape(-1)[:FINGERPRINT_ELEMENTS] for e in frozen_rows]).cpu().clone()


def apply_esft(model: PreTrainedModel, cfg: MethodConfig, ctx: MethodContext) -> PreTrainedModel:
    facts = require_moe(model, "method.name=esft")
    if not ctx.samples:
        raise ConfigError("method.name=esft profiles experts on the training samples, and there are none")
    usage = expert_usage(model, ctx.samples, facts)
    selected = select_experts(usage.share(cfg.esft_score), cfg.esft_threshold)

    model.requires_grad_(False)
    params = dict(model.named_parameters())
    rows: dict[str, list[int]] = {}
    frozen: dict[str, list[int]] = {}
    for moe, chosen in zip(moe_layers(model, facts), selected, strict=True):
        prefix = f"{moe.block}.{facts.experts}."
        keep = torch.zeros(moe.num_experts, dtype=torch.bool)
        keep[chosen] = True
        for pname in facts.expert_params:
            name = prefix + pname
            p = params[name]
            p.requires_grad_(True)
            drop = (~keep).view(-1, *([1] * (p.ndim - 1)))
            p.register_hook(lambda g, drop=drop: g.masked_fill(drop.to(g.device), 0))
            rows[name] = sorted(chosen)
            frozen[name] = [e for e in range(moe.num_experts) if not keep[e]]
    routers = [n for n in params if is_router(facts, n)] if cfg.train_router else []
    for name in routers:
        params[name].requires_grad_(True)

    state = method_state(model)
    state["esft"] = {
        "rows": rows,
        "frozen_rows": frozen,
        "routers": routers,
        "fingerprints": {n: _fingerprint(params[n], r) for n, r in frozen.items() if r},
        "experts": {
            "score": cfg.esft_score,
            "threshold": cfg.esft_threshold,
            "samples": usage.samples,
            "tokens": usage.tokens,
            "layers": {
                str(layer): {"selected": sorted(chosen), "share": [round(float(x), 6) for x in share_row]}
                for layer, chosen, share_row in zip(usage.layers, selected, usage.share(cfg.esft_score), strict=True)
            },
        },
    }
    # Only the selected rows count as trainable (count_parameters subtracts the masked ones).
    state["masked_elements"] = sum(params[n][0].numel() * len(r) for n, r in frozen.items())
    return model


def esft_step(model: torch.nn.Module, cfg: MethodConfig, step: int) -> None:
    state = method_state(model)["esft"]
    params = dict(model.named_parameters())
    for name, before in state["fingerprints"].items():
        if not torch.equal(_fingerprint(params[name], state["frozen_rows"][name]), before):
            raise ConfigError(
                f"ESFT: unselected experts of {name} changed at step {step}; AdamW weight decay scales whole fused "
                "expert tensors, so ESFT needs train.weight_decay=0"
            )


def save_esft(model: torch.nn.Module, cfg: MethodConfig, run_dir: Path) -> Path:
    state = method_state(model)["esft"]
    names = list(state["rows"]) + state["routers"]
    out = save_changed_tensors(model, cfg, run_dir, names, rows=state["rows"])
    (out / "experts.json").write_text(json.dumps(state["experts"], indent=2))
    return out
