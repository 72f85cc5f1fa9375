"""GRPO recipe: reinforcement learning from verifiable rewards (Shao et al. 2024, DeepSeekMath §4; DeepSeek-R1).

    thinktune grpo --data bundled:arithmetic/train --rewards accuracy --rewards format
    thinktune grpo --config my.yaml --adapter runs/quickstart/adapter -o runs/grpo --set train.max_steps=30

For each prompt, G completions are sampled from the current policy; every reward function scores each one; the
advantage of a completion is its reward relative to its group, Â = (r − mean) / (std + eps); the policy maximises the
clipped importance-weighted advantage, minus β·KL to the reference (k3 estimator, Schulman 2020):

    L = −agg_t[ min(ρ_t Â, clip(ρ_t, 1−ε, 1+ε_high) Â) − β·(π_ref/π_θ − log(π_ref/π_θ) − 1) ],  ρ_t = π_θ/π_old

agg: `sequence_mean` (GRPO: token mean per completion, then mean), `token` (DAPO, Yu et al. 2025: mean over all
tokens of the batch), `dr_grpo` (Liu et al. 2025: sum / (completions × max_completion_length), and Â without the std
division). Sampling happens inside `make_batch`, so the shared TrainLoop runs GRPO unchanged; with μ =
grpo.num_iterations > 1 each sampled batch is reused for μ updates, with π_old recorded at sampling time (and an
epoch then visits 1/μ of the prompts). With μ = 1, π_old is the current policy: ρ = 1 with the same gradient, and
the extra forward pass is skipped (TRL does the same). Log-probs use the sampling temperature, so ρ compares the
distributions the completions were actually drawn from.

With `grpo.dynamic_sampling` (DAPO §3.2) a group whose rewards are all equal — every completion right, or every one
wrong — is dropped before the update (its advantages are zero, so it would only dilute the token mean), and further
prompts, drawn from a seeded shuffle of the whole prompt set, are sampled until the micro-batch again holds
`train.batch_size` informative groups (or `grpo.max_resample_rounds` extra rounds are spent): a dropped group costs
its sampling but no forward/backward pass, and every update carries a full batch of signal. Reward curves are logged
over every sampled group, kept or not, so they stay comparable with runs without it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from rich.console import Console

from thinktune.config import DataConfig, RunConfig, Section
from thinktune.data.cleaning import Cleaner
from thinktune.data.dataset_info import reference as dataset_reference
from thinktune.data.reading import LoadedRecords, Reject, check_bad_fraction, read_records, write_rejects
from thinktune.data.render import inference_thinking, render_prompt
from thinktune.data.spec import DatasetSpec
from thinktune.errors import ConfigError, DataError
from thinktune.eval.generate import stop_token_ids
from thinktune.methods import count_parameters
from thinktune.train.engine.loggers import read_metrics
from thinktune.train.policy import (
    ReferencePolicy,
    adapter_starts_at_base,
    balanced_weights,
    load_policy,
    optimizer_steps,
    prepare_optimization,
    run_policy_loop,
    setup_run,
    token_logprobs,
)
from thinktune.train.rewards import Completion, resolve_reward, resolve_step_reward, reward_name, score
from thinktune.train.settings import check_settings
from thinktune.train.sft import Run, paired_before_after, run_eval, save, write_summary

Aggregation = Literal["sequence_mean", "token", "dr_grpo"]


class GRPOConfig(Section):
    num_generations: int = Field(4, ge=2, description="G: completions sampled per prompt (one group).")
    max_completion_length: int = Field(128, gt=0, description="Generation budget per completion (tokens).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (also applied to the log-probs).")
    rewards: list[str] = Field(
        default_factory=lambda: ["accuracy", "format"],
        description="Reward functions: accuracy, format, arithmetic, length_penalty, or `pkg.module:function`.",
    )
    reward_weights: list[float] | None = Field(None, description="Weight per reward (default: all 1).")
    epsilon: float = Field(0.2, gt=0, lt=1, description="PPO clip range ε (lower side).")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip range (DAPO clip-higher); default ε.")
    beta: float = Field(0.04, ge=0, description="KL coefficient to the reference policy (0: no reference pass).")
    num_iterations: int = Field(1, ge=1, description="μ: updates per sampled batch.")
    loss_aggregation: Aggregation = Field(
        "sequence_mean", description="sequence_mean (GRPO), token (DAPO), dr_grpo (Dr. GRPO)."
    )
    advantage_eps: float = Field(1e-4, gt=0, description="eps in (r − mean) / (std + eps).")
    dynamic_sampling: bool = Field(
        False,
        description="DAPO dynamic sampling: drop groups whose rewards are all equal and sample more prompts "
        "until the micro-batch is full (or max_resample_rounds is spent).",
    )
    max_resample_rounds: int = Field(
        4, ge=0, description="Extra sampling rounds per micro-batch with dynamic_sampling."
    )
    process_reward: str | None = Field(
        None,
        description="Step reward for process supervision (DeepSeekMath §4.1.3): arithmetic_steps or "
        "`pkg.module:function`; its group-normalised step scores are added to each token's advantage.",
    )
    process_credit: Literal["return", "step"] = Field(
        "return",
        description="Which step scores a token gets: `return` = every step ending after it (DeepSeekMath), "
        "`step` = only the step it belongs to.",
    )

    @model_validator(mode="after")
    def _weights_match(self) -> GRPOConfig:
        if not self.rewards:
            raise ValueError("grpo.rewards: give at least one reward function")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError(
                f"grpo.reward_weights has {len(self.reward_weights)} values for {len(self.rewards)} rewards"
            )
        return self

    @property
    def weights(self) -> list[float]:
        return self.reward_weights or [1.0] * len(self.rewards)


# ---- the objective: pure functions ----


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


def token_char_starts(tokenizer, ids: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """For each row of completion token ids, the character offset in its decoded text where each token starts."""
    return [
        [len(tokenizer.decode(row[:t].tolist(), skip_special_tokens=True)) for t in range(int(n))]
        for row, n in zip(ids, lengths, strict=True)
    ]


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


# ---- sampling ----


def positions(attention: torch.Tensor) -> torch.Tensor:
    """Position ids that skip the left padding, as generate() computes them."""
    return (attention.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def sample_completions(
    model, tokenizer, prompts: list[str], num_generations: int, max_new_tokens: int, temperature: float
) -> tuple[dict[str, torch.Tensor], list[Completion]]:
    """G samples per prompt. The batch is [left-padded prompt | completion]: labels on the completion tokens up to
    and including the first end-of-turn token, position ids that skip the left padding (as in generate())."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    prompt_ids = enc["input_ids"].repeat_interleave(num_generations, 0)
    prompt_mask = enc["attention_mask"].repeat_interleave(num_generations, 0)
    stops = stop_token_ids(tokenizer, model)
    out = model.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        do_sample=True,
        temperature=temperature,
        top_p=None,
        top_k=None,  # sample from the policy itself, not a truncated version of it
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id,
    )
    completion = out[:, prompt_ids.shape[1] :]
    width = completion.shape[1]
    is_stop = torch.isin(completion, torch.tensor(stops, device=completion.device))
    stopped = is_stop.any(dim=1)
    lengths = torch.where(stopped, is_stop.int().argmax(dim=1) + 1, torch.full_like(stopped, width, dtype=torch.long))
    cmask = torch.arange(width, device=completion.device)[None, :] < lengths[:, None]
    completion = completion.masked_fill(~cmask, tokenizer.pad_token_id)
    attention = torch.cat([prompt_mask, cmask.long()], dim=1)
    labels = torch.cat([torch.full_like(prompt_ids, -100), completion.masked_fill(~cmask, -100)], dim=1)
    batch = {
        "input_ids": torch.cat([prompt_ids, completion], dim=1),
        "attention_mask": attention,
        "position_ids": positions(attention),
        "labels": labels,
        "completion_mask": cmask.long(),
    }
    completions = [
        Completion(
            tokenizer.decode(completion[i, : lengths[i]].tolist(), skip_special_tokens=True),
            int(lengths[i]),
            max_new_tokens,
            not bool(stopped[i]),
        )
        for i in range(len(completion))
    ]
    return batch, completions


class RolloutReuse:
    """μ updates per sampled batch: each run of `accum` freshly sampled micro-batches (one optimizer step) is
    replayed μ − 1 more times before sampling again."""

    def __init__(self, iterations: int, accum: int):
        self.iterations, self.accum, self.calls = iterations, accum, 0
        self.stored: dict[int, dict[str, torch.Tensor]] = {}

    def next(self, sample: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        phase, slot = (self.calls // self.accum) % self.iterations, self.calls % self.accum
        self.calls += 1
        if phase == 0 or slot not in self.stored:
            self.stored[slot] = sample()
        return self.stored[slot]


# ---- the recipe ----


def _name(ref: str | DatasetSpec) -> str:
    return ref if isinstance(ref, str) else ref.path


def load_rl_tasks(cfg: DataConfig, files: list[str | DatasetSpec]) -> tuple[list[dict], list[Reject]]:
    """Prompt + answer records (any task format, or SFT records with an `answer` field), cleaned when data.cleaning
    says so (the rules of `thinktune data clean --kind task`), and the rejects. data.max_length and
    data.max_train_samples need the tokenizer: `fit_prompts` applies them."""
    cleaner = Cleaner(cfg.cleaning) if cfg.cleaning else None  # one cleaner: duplicates across files count too
    tasks, rejects = [], []
    for ref in files:
        loaded = read_records(ref, cfg.format, kind="task")
        check_bad_fraction(loaded, cfg.max_bad_fraction, _name(ref))
        rejects += loaded.rejects
        for item in cleaner.stream(loaded.records) if cleaner else loaded.records:
            (rejects if isinstance(item, Reject) else tasks).append(item)  # cleaned away: a reject, not a data error
    if not tasks:
        raise DataError(f"no usable prompts with answers in {', '.join(map(_name, files))}")
    return tasks, rejects


def task_prompt(tokenizer, task: dict, data: DataConfig) -> str:
    """The prompt a task is sampled from: the chat template's generation prompt, in data.thinking's mode."""
    return render_prompt(
        tokenizer,
        task["prompt"],
        data.system_prompt,
        tools=task.get("tools"),
        enable_thinking=inference_thinking(data.thinking, task.get("meta", {}).get("enable_thinking")),
    )


def fit_prompts(tokenizer, tasks: list[dict], data: DataConfig) -> tuple[list[dict], list[Reject]]:
    """The first data.max_train_samples tasks whose prompt fits data.max_length tokens; longer prompts are rejected,
    not cut, as SFT rejects longer samples (the completion's budget is grpo.max_completion_length)."""
    kept, rejects = [], []
    for task in tasks:
        if data.max_train_samples and len(kept) >= data.max_train_samples:
            break
        n = len(tokenizer(task_prompt(tokenizer, task, data), add_special_tokens=False)["input_ids"])
        if n <= data.max_length:
            kept.append(task)
            continue
        meta = task.get("meta", {})
        reason = f"prompt too long: {n} tokens > data.max_length={data.max_length}"
        rejects.append(Reject(meta.get("source", "?"), meta.get("line", 0), reason))
    check_bad_fraction(LoadedRecords(records=kept, rejects=rejects), data.max_bad_fraction, "training prompts")
    if not kept:
        raise DataError(f"no training prompt fits data.max_length={data.max_length} tokens")
    return kept, rejects


# per-completion entries of a rollout (first dimension = completions); the others are [prompt | completion] layouts
PER_COMPLETION = ("advantages", "rewards", "reward_total", "n_tokens", "truncated")


def sample_groups(
    run: Run, tasks: list[dict], g: GRPOConfig, fns: list, step_fn: Callable | None = None
) -> dict[str, torch.Tensor]:
    """G scored completions for each task, with group-relative advantages (on the CPU); with a step reward also
    per-token advantages (`token_advantages`: the completion's advantage plus its process advantages)."""
    model = run.accelerator.unwrap_model(run.model)
    prompts = [task_prompt(run.tokenizer, t, run.cfg.data) for t in tasks]
    was_training = model.training
    model.eval()
    batch, completions = sample_completions(
        model, run.tokenizer, prompts, g.num_generations, g.max_completion_length, g.temperature
    )
    model.train(was_training)
    per_completion = [t for t in tasks for _ in range(g.num_generations)]
    rewards = torch.tensor(score(fns, completions, per_completion))
    total = rewards @ torch.tensor(g.weights)
    scale = g.loss_aggregation != "dr_grpo"
    batch = {k: v.cpu() for k, v in batch.items()}
    batch["advantages"] = group_advantages(total.view(-1, g.num_generations), scale, g.advantage_eps).view(-1)
    if step_fn is not None:
        steps = score_steps(step_fn, completions, per_completion)
        mask = batch["completion_mask"]
        starts = token_char_starts(run.tokenizer, batch["input_ids"][:, -mask.shape[1] :], mask.sum(1))
        process = process_advantages(
            steps, starts, g.num_generations, mask.shape[1], g.process_credit, scale, g.advantage_eps
        )
        batch["token_advantages"] = (batch["advantages"][:, None] + process) * mask
        batch["step_score"] = torch.tensor([sum(s for _, s in st) / len(st) if st else 0.0 for st in steps])
    batch["rewards"] = rewards
    batch["reward_total"] = total
    batch["n_tokens"] = torch.tensor([c.n_tokens for c in completions], dtype=torch.float)
    batch["truncated"] = torch.tensor([c.truncated for c in completions], dtype=torch.float)
    return batch


def score_steps(fn: Callable, completions: list[Completion], tasks: list[dict]) -> list[list[tuple[int, float]]]:
    """The step reward of every completion, checked: a list of (character offset, score) pairs."""
    out = []
    for c, t in zip(completions, tasks, strict=True):
        value = fn(c, t)
        try:
            out.append([(int(end), float(s)) for end, s in value])
        except (TypeError, ValueError):
            raise ConfigError(
                f"step reward {getattr(fn, '__name__', fn)!r} returned {value!r}, not a list of (offset, score)"
            ) from None
    return out


def informative_groups(totals: torch.Tensor, g: GRPOConfig) -> torch.Tensor:
    """(P,) bool from the (P·G,) total rewards: groups whose rewards are not all equal."""
    groups = totals.view(-1, g.num_generations)
    return (groups != groups[:, :1]).any(dim=1)


def trainable_groups(batch: dict[str, torch.Tensor], g: GRPOConfig) -> torch.Tensor:
    """(P,) bool: groups with any learning signal — outcome rewards that differ, or (process supervision) step
    scores that do."""
    keep = informative_groups(batch["reward_total"], g)
    if "token_advantages" in batch:
        keep |= batch["token_advantages"].view(keep.shape[0], -1).abs().amax(dim=1) > 0
    return keep


def select_groups(batch: dict[str, torch.Tensor], keep: torch.Tensor, g: GRPOConfig) -> dict[str, torch.Tensor]:
    rows = keep.repeat_interleave(g.num_generations)
    return {k: v[rows] for k, v in batch.items()}


def merge_rollouts(parts: list[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Stack rollouts sampled separately: prompts re-padded on the left and completions on the right to the widest
    of each, position ids recomputed from the attention mask (as sample_completions builds them)."""
    if len(parts) == 1:
        return parts[0]
    widths = [(p["input_ids"].shape[1] - p["completion_mask"].shape[1], p["completion_mask"].shape[1]) for p in parts]
    pw, cw = max(w[0] for w in widths), max(w[1] for w in widths)
    fills = {"input_ids": pad_token_id, "attention_mask": 0, "labels": -100}
    out: dict[str, list[torch.Tensor]] = {k: [] for k in parts[0] if k != "position_ids"}
    for part, (p, c) in zip(parts, widths, strict=True):
        for key in out:
            v = part[key]
            if key in fills:
                v = torch.nn.functional.pad(v, (pw - p, cw - c), value=fills[key])
            elif key in ("completion_mask", "token_advantages"):
                v = torch.nn.functional.pad(v, (0, cw - c), value=0)
            out[key].append(v)
    merged = {k: torch.cat(v) for k, v in out.items()}
    merged["position_ids"] = positions(merged["attention_mask"])
    return merged


class PromptPool:
    """Replacement prompts for dynamic sampling: a seeded shuffle of all prompts, cycled."""

    def __init__(self, n: int, seed: int):
        self.n, self.rng, self.order = n, random.Random(seed), []

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if not self.order:
                self.order = self.rng.sample(range(self.n), self.n)
            out.append(self.order.pop())
        return out


def rollout_batch(
    run: Run,
    tasks: list[dict],
    g: GRPOConfig,
    fns: list,
    reference: ReferencePolicy | None,
    pool: Callable[[int], list[dict]] | None = None,
    step_fn: Callable | None = None,
):
    """Sample, score, and attach advantages (+ reference and π_old log-probs) for one micro-batch of prompts. With a
    `pool` (dynamic sampling), groups without reward variance are dropped and refilled from it."""
    t0 = time.perf_counter()
    batch = sample_groups(run, tasks, g, fns, step_fn)
    sampled = [batch]
    if pool is not None:
        want, kept, rounds = len(tasks), [], 0
        while True:
            keep = trainable_groups(batch, g)
            if keep.any():
                kept.append(select_groups(batch, keep, g))
            have = sum(len(k["advantages"]) for k in kept) // g.num_generations
            if have >= want or rounds >= g.max_resample_rounds:
                break
            rounds += 1
            batch = sample_groups(run, pool(want - have), g, fns, step_fn)
            sampled.append(batch)
        # nothing informative at all: train on the first sample (zero advantage, only the KL term acts)
        batch = merge_rollouts(kept, run.tokenizer.pad_token_id) if kept else sampled[0]
    # reward statistics over every sampled group, kept or not
    batch["sampled_rewards"] = torch.cat([s["rewards"] for s in sampled])
    batch["sampled_total"] = torch.cat([s["reward_total"] for s in sampled])
    if step_fn is not None:
        batch["sampled_step_score"] = torch.cat([s["step_score"] for s in sampled])
    batch["rollout_seconds"] = torch.tensor(time.perf_counter() - t0)
    batch = {k: v.to(run.accelerator.device) for k, v in batch.items()}
    width = batch["completion_mask"].shape[1]
    if reference is not None:
        batch["ref_logps"] = reference.logprobs(run.model, batch, g.temperature, keep=width)
    if g.num_iterations > 1:
        with torch.no_grad():
            batch["old_logps"] = token_logprobs(run.model, batch, g.temperature, keep=width)
    return batch


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


def train(
    run: Run,
    tasks: list[dict],
    g: GRPOConfig,
    fns: list,
    adapter: str | None,
    step_fn: Callable | None = None,
    resume: str | None = None,
) -> dict[str, Any]:
    tcfg = run.cfg.train
    reference = (
        ReferencePolicy.of(run.model, adapter_starts_at_base(run.model, adapter is not None, run.cfg))
        if g.beta > 0
        else None
    )
    trainable, total = count_parameters(run.model)
    run.console.print(
        f"grpo: {trainable:,} trainable of {total:,} parameters; G={g.num_generations}, "
        f"reference: {reference.kind if reference else 'none (beta=0)'}"
        + (f"; process reward: {g.process_reward} ({g.process_credit} credit)" if g.process_reward else "")
    )
    opt = prepare_optimization(run, len(tasks), reference)
    reuse = RolloutReuse(g.num_iterations, tcfg.gradient_accumulation_steps)
    names = [reward_name(r) for r in g.rewards]
    pool = None
    if g.dynamic_sampling:
        # a different stream on each process, so processes do not refill with the same prompts
        order = PromptPool(len(tasks), tcfg.seed * 1_000 + run.accelerator.process_index)
        pool = lambda k: [tasks[i] for i in order.take(k)]  # noqa: E731
    # A resume (`resume`) restores weights, optimizer, schedule, RNGs and data position, which is everything a step
    # depends on with the defaults: the reference is frozen and β is constant. Not restored, so a resumed curve
    # differs from the uninterrupted one: the rollouts kept for grpo.num_iterations > 1 (resampled at the resumed
    # step) and the dynamic-sampling prompt stream (restarts from its seed).
    return run_policy_loop(
        run,
        opt,
        len(tasks),
        lambda idx: reuse.next(lambda: rollout_batch(run, [tasks[i] for i in idx], g, fns, reference, pool, step_fn)),
        grpo_loss_fn(g, names),
        reference,
        sample_weights=balanced_weights(run.cfg.data, tasks),
        resume=resume,
    )


def plot_rewards(metrics_path, out_png, keys: list[str]) -> None:
    """plots/reward.png: the mean total reward and each metrics key in `keys` (each reward function's mean, the
    step reward's mean) per optimizer step (thin), with a trailing mean over 8 steps (thick): one step's few groups
    are noisy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ["reward", *keys]:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            (line,) = ax.plot(xs, ys, lw=0.8, alpha=0.45, marker=".", markersize=3)
            smooth = [sum(ys[max(0, i - 7) : i + 1]) / len(ys[max(0, i - 7) : i + 1]) for i in range(len(ys))]
            ax.plot(xs, smooth, lw=2, color=line.get_color(), label=f"{key} (mean of last 8)")
    ax.set_xlabel("optimizer step")
    ax.set_title("GRPO reward (mean over sampled completions)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def run_grpo(
    cfg: RunConfig,
    g: GRPOConfig,
    data_files: list[str] | None = None,
    adapter: str | None = None,
    console: Console | None = None,
    resume: str | None = None,
) -> dict[str, Any]:
    check_settings(cfg, "grpo", data_files)  # SFT-only settings: one line before anything loads
    console = console or Console()
    wall = time.perf_counter()
    fns = [resolve_reward(r) for r in g.rewards]  # fail on a bad reward name before loading anything
    step_fn = resolve_step_reward(g.process_reward) if g.process_reward else None
    files = data_files or list(cfg.data.train)
    if data_files and cfg.data.dataset_dir:  # --data may name datasets of data.dataset_dir, as data.train may
        files = [dataset_reference(f, cfg.data.dataset_dir) for f in data_files]
    tasks, rejects = load_rl_tasks(cfg.data, files)  # data errors before the model loads
    run, test_rejects = setup_run(cfg, console)
    tasks, too_long = fit_prompts(run.tokenizer, tasks, cfg.data)
    rejects += too_long
    write_rejects(rejects + test_rejects, run.dir / "rejects.jsonl")
    console.print(
        f"data: {len(tasks)} training prompts, {len(run.tasks or [])} test tasks, "
        f"{len(rejects) + len(test_rejects)} rejected (→ rejects.jsonl)"
    )
    run.model = load_policy(run, adapter, optimizer_steps(run, len(tasks)))
    before = run_eval(run, "before") if cfg.eval.before else None
    stats = train(run, tasks, g, fns, adapter, step_fn, resume)
    adapter_dir = save(run)
    names = [reward_name(r) for r in g.rewards]
    if run.accelerator.is_main_process:
        keys = [f"reward/{n}" for n in names]
        if g.process_reward:
            keys.append(f"step_reward/{reward_name(g.process_reward)}")
        plot_rewards(run.dir / "metrics.jsonl", run.dir / "plots" / "reward.png", keys)
    after = run_eval(run, "after") if cfg.eval.after else None
    rows = [r for r in read_metrics(run.dir / "metrics.jsonl") if "reward" in r]
    summary = {
        "run_dir": str(run.dir),
        "adapter_dir": str(adapter_dir),
        "model": cfg.model.name_or_path,
        "method": cfg.method.name,
        "grpo": g.model_dump(mode="json"),
        "start_adapter": str(adapter) if adapter else None,
        "train_prompts": len(tasks),
        "before": before.headline() if before else None,
        "after": after.headline() if after else None,
        "paired": paired_before_after(before, after),
        "reward_first": rows[0]["reward"] if rows else None,
        "reward_last": rows[-1]["reward"] if rows else None,
        "reward_plot": str(run.dir / "plots" / "reward.png"),
        **stats,
        "wall_seconds": time.perf_counter() - wall,
    }
    write_summary(run, adapter_dir, summary)
    return summary
