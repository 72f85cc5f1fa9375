"""The preference family — DPO, IPO, SimPO, ORPO, KTO — as pure functions of summed completion log-probs, one value
per pair (per answer for KTO), tested against TRL's; and the objective the loop runs: a mean per pair (per answer).

Log-probs are sums over the completion tokens of the last assistant turn only (an earlier turn is prompt). KTO's
reference point z₀ is estimated per micro-batch from mismatched (prompt, answer) rows, without gradient, as TRL does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from thinktune.config import DPOConfig
from thinktune.train.engine.losses import token_logprobs
from thinktune.train.objectives import Objective, batch_rows

if TYPE_CHECKING:
    from thinktune.train.policy import ReferencePolicy

REFERENCE_FREE = {"simpo", "orpo"}


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """−log σ(β·h), h = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)] (Rafailov et al. 2023, Eq. 7).


    label_smoothing ε > 0: conservative DPO, −(1−ε)·log σ(βh) − ε·log σ(−βh)."""
    h = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def ipo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """(h − 1/(2β))² (Azar et al. 2023, Eq. 17), h from per-token mean log-ratios so that β does not depend on the
    answer length (TRL's normalisation, confirmed with the IPO authors)."""
    h = (chosen_logps - ref_chosen_logps) / chosen_lengths.clamp(min=1) - (
        rejected_logps - ref_rejected_logps
    ) / rejected_lengths.clamp(min=1)
    return (h - 1 / (2 * beta)) ** 2


def simpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    gamma: float,
) -> torch.Tensor:
    """−log σ(β·log π(y_w)/|y_w| − β·log π(y_l)/|y_l| − γ) (Meng et al. 2024, Eq. 6); no reference model."""
    margin = chosen_logps / chosen_lengths.clamp(min=1) - rejected_logps / rejected_lengths.clamp(min=1)
    return -F.logsigmoid(beta * margin - gamma)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x < 0, stable on both sides of −ln 2 (Mächler 2012)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """NLL(y_w) − λ·log σ(log odds(y_w) − log odds(y_l)) (Hong et al. 2024, Eq. 6–7), odds(y) = P(y)/(1 − P(y))
    with P(y) = exp(mean token log-prob); the NLL is the chosen answer's mean token cross-entropy."""
    avg_c = chosen_logps / chosen_lengths.clamp(min=1)
    avg_r = rejected_logps / rejected_lengths.clamp(min=1)
    log_odds = (avg_c - avg_r) - (log1mexp(avg_c) - log1mexp(avg_r))
    return -avg_c - lam * F.logsigmoid(log_odds)


def kto_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024, Eq. 8) on log-ratios r = log π(y) − log π_ref(y), per answer:
    desirable w_D·(1 − σ(β(r − z₀))), undesirable w_U·(1 − σ(β(z₀ − r))); z₀ = max(0, kl), no gradient through z₀.
    Returns the desirable losses followed by the undesirable ones."""
    z0 = kl.detach().clamp(min=0)
    chosen = desirable_weight * (1 - torch.sigmoid(beta * (chosen_logratios - z0)))
    rejected = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - rejected_logratios)))
    return torch.cat([chosen, rejected])


@dataclass
class PairLogps:
    """Summed completion log-probs of a batch of pairs (policy, and reference when the loss has one)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_len: torch.Tensor
    rejected_len: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    kl: torch.Tensor | None = None  # KTO: z₀ estimate from mismatched (prompt, answer) pairs


LossFn = Callable[[PairLogps, DPOConfig], torch.Tensor]


PREFERENCE_LOSSES: dict[str, LossFn] = {
    "dpo": lambda p, c: dpo_loss(p.chosen, p.rejected, p.ref_chosen, p.ref_rejected, c.beta_value, c.label_smoothing),
    "ipo": lambda p, c: ipo_loss(
        p.chosen, p.rejected, p.ref_chosen, p.ref_rejected, p.chosen_len, p.rejected_len, c.beta_value
    ),
    "simpo": lambda p, c: simpo_loss(p.chosen, p.rejected, p.chosen_len, p.rejected_len, c.beta_value, c.simpo_gamma),
    "orpo": lambda p, c: orpo_loss(p.chosen, p.rejected, p.chosen_len, p.rejected_len, c.beta_value),
    "kto": lambda p, c: kto_loss(
        p.chosen - p.ref_chosen,
        p.rejected - p.ref_rejected,
        p.kl,
        c.beta_value,
        c.desirable_weight,
        c.undesirable_weight,
    ),
}


def implicit_rewards(p: PairLogps, cfg: DPOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """What each loss treats as the reward of an answer: β·log-ratio, or β·mean log-prob when reference-free."""
    b = cfg.beta_value
    if cfg.loss in REFERENCE_FREE:
        return b * p.chosen / p.chosen_len.clamp(min=1), b * p.rejected / p.rejected_len.clamp(min=1)
    return b * (p.chosen - p.ref_chosen), b * (p.rejected - p.ref_rejected)


def kl_rows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("kl_"): v for k, v in batch.items() if k.startswith("kl_")}


def preference_loss_fn(cfg: DPOConfig, reference: ReferencePolicy | None):
    def loss_fn(model, batch):
        # Live reference passes first: switching adapters must not happen between the policy forward and backward.
        ref = ref_kl = None
        if cfg.loss not in REFERENCE_FREE:
            ref = batch["ref_logps"] if "ref_logps" in batch else reference.logprobs(model, batch).sum(-1)
        if cfg.loss == "kto":
            rows = kl_rows(batch)
            ref_kl = batch["ref_kl_logps"] if "ref_kl_logps" in batch else reference.logprobs(model, rows).sum(-1)
            with torch.no_grad():
                policy_kl = token_logprobs(model, rows).sum(-1)
        logps = token_logprobs(model, batch).sum(-1)
        lengths = (batch["labels"][:, 1:] != -100).sum(-1)
        p = PairLogps(*logps.chunk(2), *lengths.chunk(2))
        if ref is not None:
            p.ref_chosen, p.ref_rejected = ref.chunk(2)
        if ref_kl is not None:
            p.kl = (policy_kl - ref_kl).mean()
        loss = PREFERENCE_LOSSES[cfg.loss](p, cfg).mean()
        chosen_r, rejected_r = (r.detach() for r in implicit_rewards(p, cfg))
        parts = {
            "rewards/chosen": float(chosen_r.mean()),
            "rewards/rejected": float(rejected_r.mean()),
            "rewards/accuracy": float((chosen_r > rejected_r).float().mean()),
            "rewards/margin": float((chosen_r - rejected_r).mean()),
            "logps/chosen": float(p.chosen.detach().mean()),
            "logps/rejected": float(p.rejected.detach().mean()),
        }
        if p.kl is not None:
            parts["kl"] = float(p.kl)
        return loss, parts

    return loss_fn


def preference_objective(cfg: DPOConfig, reference: ReferencePolicy | None) -> Objective:
    """A mean per pair (rows = chosen + rejected), or for KTO per answer (every row is scored on its own)."""
    if cfg.loss == "kto":
        return Objective(preference_loss_fn(cfg, reference), batch_rows, "answer")
    return Objective(preference_loss_fn(cfg, reference), lambda batch: batch_rows(batch) // 2, "pair")
