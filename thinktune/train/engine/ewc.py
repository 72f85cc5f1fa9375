"""Elastic weight consolidation (Kirkpatrick et al. 2017): keep the weights that mattered for an earlier task close
to where that task left them, with a quadratic penalty weighted by the diagonal Fisher information.

After task A: `compute_fisher` on A's batches, then `save_fisher(run_dir / "fisher.pt", fisher, anchor)`.
Training task B: `fisher, anchor = load_fisher(path)`, `ewc = EWCPenalty(fisher, anchor, train.ewc_lambda)`, and
add `ewc(model)` to every loss.

Parameter names are compared after removing what wrappers add (`module.` from DDP, `_orig_mod.` from torch.compile,
`base_model.model.` and a LoRA layer's `.base_layer` from PEFT), so a Fisher file from a plain model applies to the
same model wrapped, and back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from thinktune.errors import ConfigError
from thinktune.train.engine.losses import causal_lm_loss

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "base_model.model.")


def canonical_name(name: str) -> str:
    """The name the unwrapped model gives a parameter:
    `base_model.model.model.layers.0.mlp.up_proj.base_layer.weight` → `model.layers.0.mlp.up_proj.weight`."""
    name = name.replace(".base_layer.", ".")
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def compute_fisher(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    params: list[tuple[str, torch.nn.Parameter]],
) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher: the mean over batches of the squared gradient of the LM loss, per parameter.

    Squaring per batch (not per sample) is the cheap approximation; batches of one sample give the textbook empirical
    Fisher. Runs in eval mode (no dropout), leaves `.grad`, `requires_grad` and the training mode as they were; frozen
    parameters may be listed too. Keys are canonical names, values float32 tensors on the parameters' devices.
    """
    was_training = model.training
    frozen = [p for _, p in params if not p.requires_grad]
    fisher = {canonical_name(name): torch.zeros_like(p, dtype=torch.float32) for name, p in params}
    device = next(model.parameters()).device
    count = 0
    try:
        model.eval()
        for p in frozen:
            p.requires_grad_(True)
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
            loss = causal_lm_loss(logits, batch["labels"])
            grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
            for (name, _), g in zip(params, grads, strict=True):
                if g is not None:
                    fisher[canonical_name(name)] += g.detach().float() ** 2
            count += 1
    finally:
        for p in frozen:
            p.requires_grad_(False)
        model.train(was_training)
    if not count:
        raise ValueError("compute_fisher needs at least one batch")
    return {name: f / count for name, f in fisher.items()}


def save_fisher(
    path: str | Path,
    fisher: Mapping[str, torch.Tensor],
    anchor_params: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
) -> Path:
    """Write {"fisher": {name: F}, "anchor": {name: θ*}} (canonical names, CPU tensors) for a later run's EWC."""
    pairs = anchor_params.items() if isinstance(anchor_params, Mapping) else anchor_params
    anchor = {canonical_name(n): p.detach().cpu().clone() for n, p in pairs if canonical_name(n) in fisher}
    missing = sorted(set(fisher) - set(anchor))
    if missing:
        raise ValueError(f"save_fisher: no anchor value for {len(missing)} parameters, e.g. {missing[0]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fisher": {n: f.detach().cpu() for n, f in fisher.items()}, "anchor": anchor}, path)
    return path


def load_fisher(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read a `save_fisher` file → (fisher, anchor); a missing or foreign file is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"train.ewc_fisher: {path} not found (write it with a previous run's Fisher step)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file is the user's to fix
        raise ConfigError(f"train.ewc_fisher: {path} is not a readable Fisher file ({e.__class__.__name__})") from None
    if not isinstance(data, dict) or not {"fisher", "anchor"} <= set(data):
        raise ConfigError(f"train.ewc_fisher: {path} lacks 'fisher' and 'anchor' entries")
    return data["fisher"], data["anchor"]


class EWCPenalty:
    """lam/2 · Σ_i F_i (θ_i − θ*_i)² over the model's parameters whose canonical name is in the Fisher file."""

    def __init__(self, fisher: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor], lam: float):
        self.fisher = {canonical_name(n): f for n, f in fisher.items()}
        anchor = {canonical_name(n): a for n, a in anchor.items()}
        missing = sorted(set(self.fisher) - set(anchor))
        if missing:
            raise ConfigError(f"train.ewc_fisher: no anchor value for {len(missing)} parameters, e.g. {missing[0]}")
        self.anchor = {n: anchor[n] for n in self.fisher}
        self.lam = lam

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        total, matched = None, 0
        for name, p in model.named_parameters():
            key = canonical_name(name)
            if key not in self.fisher:
                continue
            if self.fisher[key].shape != p.shape:
                raise ConfigError(
                    f"train.ewc_fisher: {key} has shape {tuple(self.fisher[key].shape)} in the Fisher file "
                    f"but {tuple(p.shape)} in the model; was it computed for another model?"
                )
            if self.fisher[key].device != p.device:  # moved once, on the first call
                self.fisher[key] = self.fisher[key].to(p.device, torch.float32)
                self.anchor[key] = self.anchor[key].to(p.device, torch.float32)
            term = (self.fisher[key] * (p.float() - self.anchor[key]) ** 2).sum()
            total = term if total is None else total + term
            matched += 1
        if not matched:
            raise ConfigError("train.ewc_fisher: no parameter of this model is named in the Fisher file")
        return self.lam / 2 * total
