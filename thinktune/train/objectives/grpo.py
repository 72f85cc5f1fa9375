"""The GRPO objective (Shao et al. 2024, DeepSeekMath §4; DeepSeek-R1), as pure functions, and the objective the loop
runs.

The advantage of a completion is its reward relative to its group, Â = (r − mean) / (std + eps); the policy maximises
the clipped importance-weighted advantage, minus β·KL to the reference (k3 estimator, Schulman 2020):

    L = −agg_t[ min(ρ_t Â, clip(ρ_t, 1−ε, 1+ε_high) Â) − β·(π_ref/π_θ − log(π_ref/π_θ) − 1) ],  ρ_t = π_θ/π_old

agg: `sequence_mean` (GRPO: token mean per completion, then mean over completions), `token` (DAPO, Yu et al. 2025:
mean over every completion token), `dr_grpo` (Liu et al. 2025: sum / (completions × max_completion_length), and Â
without the std division). Whatever the aggregation, the mean runs over the whole global batch: the loop weights
micro-batches and processes by completions, or by completion tokens for `token`.
"""

from __future__ import annotations

from typing import Literal

import torch

from thinktune.config import Aggregation, GRPOConfig
from thinktune.train.engine.losses import token_logprobs
from thinktune.train.objectives import Objective, batch_rows
from thinktune.train.rewards import reward_name


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """(P, G) rewards → advantages within each group: r − mean, divided by (std + eps) when `scale` (std with
    Bessel's correction, as TRL). A group whose rewards are all equal gets 0: it carries no learning signal."""
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    return centered / (rewards.std(dim=1, keepdim=True) + eps) if scale else centered


def process_advantages(
    steps: list[list[tuple[int, float]]],
    token_starts: list[list[int]],
    num_generations: int,
    width: int,
    credit: Literal["return", "step"] = "return",
    scale: bool = True,
    eps: float = 1e-4,
) -> torch.Tensor:
    """(N, width) per-token advantages from step scores (DeepSeekMath §4.1.3, process supervision).

    `steps[i]` = [(end, score)] of completion i, `end` a character offset in its text; `token_starts[i][t]` = the
    character offset where its token t starts. Every step score of a group (all G completions together) is
    normalised, r̃ = (r − mean) / (std + eps) (no division when not `scale`); token t then gets the sum of r̃ over the
    steps ending after it starts (`return`: the steps it leads to, as DeepSeekMath) or r̃ of the first such step only
    (`step`: the step it is part of). Tokens after the last step get 0, as does a group with fewer than two steps."""
    out = torch.zeros(len(steps), width)
    for first in range(0, len(steps), num_generations):
        group = range(first, first + num_generations)
        scores = torch.tensor([score for i in group for _, score in steps[i]], dtype=torch.float)
        if len(scores) < 2:
            continue
        centered = scores - scores.mean()
        normed = (centered / (scores.std() + eps) if scale else centered).tolist()
        k = 0
        for i in group:
            ends = [end for end, _ in steps[i]]
            mine, k = normed[k : k + len(ends)], k + len(ends)
            for t, start in enumerate(token_starts[i][:width]):
                later = [r for end, r in zip(ends, mine, strict=True) if end > start]
                if later:
                    out[i, t] = sum(later) if credit == "return" else later[0]
    return out


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π_θ ‖ π_ref) estimate k3 = e^d − d − 1, d = log π_ref − log π_θ: unbiased, always ≥ 0
    (Schulman 2020, "Approximating KL divergence"; DeepSeekMath Eq. 4)."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def clip_fraction(
    ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, eps_low: float, eps_high: float
) -> torch.Tensor:
    """Share of completion tokens whose gradient the clip removes: ρ < 1−ε with Â < 0, or ρ > 1+ε_high with Â > 0."""
    adv = advantage_per_token(advantages)
    clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    return masked_mean(clipped.float(), mask)


def advantage_per_token(advantages: torch.Tensor) -> torch.Tensor:
    """(N,) per-completion advantages as (N, 1); (N, T) per-token ones unchanged."""
    return advantages[:, None] if advantages.dim() == 1 else advantages


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, how: Aggregation, max_completion_length: int
) -> torch.Tensor:
    if how == "sequence_mean":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if how == "token":
        return masked_mean(per_token, mask)
    if how == "dr_grpo":
        return (per_token * mask).sum() / (per_token.shape[0] * max_completion_length)
    raise ValueError(f"unknown loss aggregation {how!r}")


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    aggregation: Aggregation = "sequence_mean",
    max_completion_length: int = 1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO objective (negated, to minimise) on (N, T) per-token log-probs and (N,) or (N, T) advantages.

    Returns the loss and detached statistics: kl (token mean of k3), clip_fraction, ratio (token mean)."""
    eps_high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    adv = advantage_per_token(advantages).to(logps.dtype)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + eps_high) * adv)
    per_token = -surrogate
    stats = {"clip_fraction": clip_fraction(ratio.detach(), advantages, mask, epsilon, eps_high)}
    stats["ratio"] = masked_mean(ratio.detach(), mask)
    if ref_logps is not None:
        kl = k3_kl(logps, ref_logps)
        if beta:
            per_token = per_token + beta * kl
        stats["kl"] = masked_mean(kl.detach(), mask)
    return aggregate(per_token, mask, aggregation, max_completion_length), stats


def informative_groups(totals: torch.Tensor, g: GRPOConfig) -> torch.Tensor:
    """(P,) bool from the (P·G,) total rewards: groups whose rewards are not all equal."""
    groups = totals.view(-1, g.num_generations)
    return (groups != groups[:, :1]).any(dim=1)


def grpo_loss_fn(g: GRPOConfig, names: list[str]):
    def loss_fn(model, batch):
        width = batch["completion_mask"].shape[1]
        logps = token_logprobs(model, batch, g.temperature, keep=width)
        mask = batch["completion_mask"]
        old = batch["old_logps"] if "old_logps" in batch else logps.detach()
        loss, stats = grpo_loss(
            logps,
            old,
            batch.get("ref_logps"),
            batch["token_advantages"] if "token_advantages" in batch else batch["advantages"],
            mask,
            g.epsilon,
            g.epsilon_high,
            g.beta,
            g.loss_aggregation,
            g.max_completion_length,
        )
        groups = batch["sampled_total"].view(-1, g.num_generations)
        parts = {
            "reward": float(groups.mean()),
            "reward_std": float(groups.std(dim=1).mean()),
            "zero_std_groups": 1.0 - float(informative_groups(batch["sampled_total"], g).float().mean()),
            "trained_groups": len(batch["advantages"]) // g.num_generations,
            "sampled_groups": groups.shape[0],
            "rollout_seconds": float(batch["rollout_seconds"]),
            "completion_length": float(batch["n_tokens"].mean()),
            "truncated": float(batch["truncated"].mean()),
            **{k: float(v) for k, v in stats.items()},
        }
        for k, name in enumerate(names):
            parts[f"reward/{name}"] = float(batch["sampled_rewards"][:, k].mean())
        if "sampled_step_score" in batch:  # mean step score of the sampled completions (share of right steps)
            parts[f"step_reward/{reward_name(g.process_reward)}"] = float(batch["sampled_step_score"].mean())
        return loss, parts

    return loss_fn


def grpo_objective(g: GRPOConfig, names: list[str]) -> Objective:
    """A mean per completion (sequence_mean, dr_grpo: the same fixed divisor per completion) or per completion token
    (token, DAPO), over the whole global batch."""
    if g.loss_aggregation == "token":
        return Objective(grpo_loss_fn(g, names), lambda batch: int(batch["completion_mask"].sum()), "completion token")
    return Objective(grpo_loss_fn(g, names), batch_rows, "completion")
