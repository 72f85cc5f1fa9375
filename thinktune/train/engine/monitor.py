"""Per-layer gradient norms and per-module update norms (seed 001's "parameter update heatmap")."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from thinktune.train.engine.loggers import read_metrics
from thinktune.train.engine.sharding import local_or_full

LAYER = re.compile(r"layers\.(\d+)\.(?:[a-z_]+\.)*?([a-z_]+_proj|experts|gate|shared_experts|[a-z_]*norm)")


def module_key(param_name: str) -> str:
    """'base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight' → 'L3.q_proj'."""
    m = LAYER.search(param_name)
    if m:
        return f"L{m.group(1)}.{m.group(2)}"
    return param_name.replace("base_model.model.", "").rsplit(".", 1)[0]


def grad_norms(params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, float]:
    sq: dict[str, float] = {}
    for name, p in params:
        if p.grad is not None:
            key = module_key(name)
            sq[key] = sq.get(key, 0.0) + float(local_or_full(p.grad.detach().float().pow(2).sum()))
    return {k: v**0.5 for k, v in sq.items()}


def snapshot(params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in params}


def update_norms(before: dict[str, torch.Tensor], params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, float]:
    sq: dict[str, float] = {}
    for name, p in params:
        key = module_key(name)
        sq[key] = sq.get(key, 0.0) + float(local_or_full((p.detach() - before[name]).float().pow(2).sum()))
    return {k: v**0.5 for k, v in sq.items()}


def plot_update_heatmap(metrics_path: Path, out: Path) -> Path | None:
    rows = [r for r in read_metrics(metrics_path) if r.get("update_norms")]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    modules = sorted({k for r in rows for k in r["update_norms"]}, key=_natural)
    grid = np.array([[r["update_norms"].get(m, np.nan) for r in rows] for m in modules])
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(rows) + 3), max(3, 0.22 * len(modules) + 1.5)))
    im = ax.imshow(np.log10(grid + 1e-12), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(modules)), modules, fontsize=6)
    ax.set_xticks(range(len(rows)), [str(r["step"]) for r in rows], fontsize=6, rotation=90)
    ax.set_xlabel("optimizer step")
    ax.set_title("parameter update norm per module (log10)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _natural(key: str) -> tuple:
    m = re.match(r"L(\d+)\.(.*)", key)
    return (int(m.group(1)), m.group(2)) if m else (10**9, key)
