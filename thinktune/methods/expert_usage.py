"""How much each routed expert of an MoE model is used on a set of samples (ESFT, Wang et al. 2024, §3.1).

Forward hooks on every router (`<mlp>.gate`, which in transformers 5 returns (logits, top-k weights, top-k indices))
record, per MoE layer and expert:
- gate share: the average gate score g_i = 1/N Σ_samples 1/L Σ_tokens g_i,t, where g_i,t is the token's top-k
  weight for expert i (as the router returns it) and 0 when i is not among its top k;
- token-selection ratio: r_i = 1/N Σ_samples Σ_tokens 1[i ∈ topK(t)] / (L·K).
Both sum to 1 over the experts of a layer. Used by `method.name=esft` and `thinktune experts profile`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from thinktune.models.registry import ArchFacts, layer_index

PROFILE_SAMPLES = 64  # enough for stable shares (ESFT §4 profiles on a few hundred); bounded for big models


@dataclass
class ExpertUsage:
    layers: list[int]  # decoder layer index of each MoE layer
    gate_share: torch.Tensor  # (MoE layers, experts), rows sum to 1
    token_ratio: torch.Tensor  # (MoE layers, experts), rows sum to 1
    samples: int
    tokens: int

    def share(self, score: str = "gate") -> torch.Tensor:
        return self.gate_share if score == "gate" else self.token_ratio

    def to_json(self) -> dict:
        return {
            "samples": self.samples,
            "tokens": self.tokens,
            "layers": self.layers,
            "gate_share": self.gate_share.tolist(),
            "token_ratio": self.token_ratio.tolist(),
        }


@dataclass
class MoELayer:
    index: int  # decoder layer
    block: str  # module path of the MoE block, e.g. "model.layers.3.mlp"
    router: torch.nn.Module
    num_experts: int


def moe_layers(model: torch.nn.Module, facts: ArchFacts) -> list[MoELayer]:
    """Every MoE block of the model, in order (dense layers, e.g. DeepSeek's first, are skipped)."""
    found = []
    for name, module in model.named_modules():
        if not name.endswith(f".{facts.mlp}.{facts.router}"):
            continue
        block = name.rsplit(".", 1)[0]
        experts = model.get_submodule(f"{block}.{facts.experts}")
        found.append(MoELayer(layer_index(name + "."), block, module, experts.num_experts))
    return found


def _route(output) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k weights, top-k indices) from a router's output: (logits, weights, indices)."""
    _, weights, indices = output
    return weights, indices


@torch.no_grad()
def expert_usage(
    model: torch.nn.Module, samples: list, facts: ArchFacts, max_samples: int = PROFILE_SAMPLES
) -> ExpertUsage:
    """Profile routing on up to `max_samples` samples (objects with `input_ids`), one sample per forward pass."""
    layers = moe_layers(model, facts)
    if not layers:
        raise ValueError("no MoE layers found")
    E = max(m.num_experts for m in layers)
    gate = torch.zeros(len(layers), E, dtype=torch.float64)
    token = torch.zeros(len(layers), E, dtype=torch.float64)
    current: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(i: int):
        def record(module, args, output):
            current[i] = _route(output)

        return record

    handles = [m.router.register_forward_hook(hook(i)) for i, m in enumerate(layers)]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    used = samples[:max_samples]
    tokens = 0
    try:
        for s in used:
            ids = torch.tensor([s.input_ids], device=device)
            current.clear()
            model(input_ids=ids)
            for i, (weights, indices) in current.items():
                w = weights.double().cpu()  # a constant scale (DeepSeek's routed_scaling_factor) cancels below
                idx = indices.cpu()
                L, K = idx.shape
                gate[i] += torch.zeros(E, dtype=torch.float64).index_add_(0, idx.reshape(-1), w.reshape(-1)) / L
                token[i] += torch.bincount(idx.reshape(-1), minlength=E).double() / (L * K)
            tokens += ids.shape[1]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    n = max(len(used), 1)
    gate, token = gate / n, token / n
    return ExpertUsage(
        layers=[m.index for m in layers],
        gate_share=(gate / gate.sum(-1, keepdim=True).clamp_min(1e-20)).float(),
        token_ratio=(token / token.sum(-1, keepdim=True).clamp_min(1e-20)).float(),
        samples=len(used),
        tokens=tokens,
    )


def select_experts(share: torch.Tensor, threshold: float) -> list[list[int]]:
    """Per layer, the fewest experts whose shares add up to at least `threshold` (ESFT §3.2), most used first."""
    chosen = []
    for row in share:
        order = torch.argsort(row, descending=True, stable=True).tolist()
        total, picked = 0.0, []
        for e in order:
            picked.append(e)
            total += float(row[e])
            if total >= threshold - 1e-6:  # shares are float32
                break
        chosen.append(picked)
    return chosen


def plot_expert_usage(usage: ExpertUsage, path: Path, score: str = "gate") -> Path:
    """Heatmap PNG: MoE layers × experts, colour = share."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    share = usage.share(score).numpy()
    L, E = share.shape
    fig, ax = plt.subplots(figsize=(max(6, min(18, 2 + 0.25 * E)), max(3, min(14, 1.5 + 0.35 * L))))
    im = ax.imshow(share, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_yticks(range(L), [str(x) for x in usage.layers], fontsize=7)
    label = "gate-score share" if score == "gate" else "token-selection ratio"
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(f"expert usage: {label}\n{usage.samples} samples, {usage.tokens} tokens", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
