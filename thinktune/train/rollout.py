"""GRPO's rollouts: G completions sampled per prompt from the current policy, scored by the reward functions, with
group-relative advantages attached (objectives/grpo.py), as one micro-batch the TrainLoop trains on.

Sampling happens inside `make_batch`, so the shared TrainLoop runs GRPO unchanged. With μ = grpo.num_iterations > 1
each sampled batch is reused for μ updates (`RolloutReuse`), with π_old recorded at sampling time (and an epoch then
visits 1/μ of the prompts). With μ = 1, π_old is the current policy: ρ = 1 with the same gradient, and the extra
forward pass is skipped (TRL does the same). Log-probs use the sampling temperature, so ρ compares the distributions
the completions were actually drawn from.

With `grpo.dynamic_sampling` (DAPO §3.2) a group whose rewards are all equal — every completion right, or every one
wrong — is dropped before the update (its advantages are zero), and further prompts, drawn from a seeded shuffle of
the whole prompt set (`PromptPool`), are sampled until the micro-batch again holds `train.batch_size` informative
groups (or `grpo.max_resample_rounds` extra rounds are spent). Reward curves are logged over every sampled group,
kept or not, so they stay comparable with runs without it.

`grpo.rollout_backend: vllm` samples with a colocated vLLM engine instead of `model.generate` (vllm_rollout.py);
the batch is built from its token ids the same way.

Both the kept rollouts and the prompt stream are part of a checkpoint (`RolloutState`), so a resumed run continues
exactly as the uninterrupted one would.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from thinktune.config import DataConfig, GRPOConfig
from thinktune.data.render import inference_thinking, render_prompt
from thinktune.errors import ConfigError
from thinktune.eval.generate import stop_token_ids
from thinktune.train.engine.losses import token_logprobs
from thinktune.train.objectives.grpo import group_advantages, informative_groups, process_advantages
from thinktune.train.policy import ReferencePolicy
from thinktune.train.rewards import Completion, score
from thinktune.train.run import Run

if TYPE_CHECKING:
    from thinktune.train.vllm_rollout import VLLMRollouts


def positions(attention: torch.Tensor) -> torch.Tensor:
    """Position ids that skip the left padding, as generate() computes them."""
    return (attention.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def sample_completions(
    model,
    tokenizer,
    prompts: list[str],
    num_generations: int,
    max_new_tokens: int,
    temperature: float,
    engine: VLLMRollouts | None = None,
) -> tuple[dict[str, torch.Tensor], list[Completion]]:
    """G samples per prompt, from `model.generate` or the vLLM `engine`. The batch is [left-padded prompt |
    completion]: labels on the completion tokens up to and including the first end-of-turn token, position ids that
    skip the left padding (as in generate())."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    prompt_ids = enc["input_ids"].repeat_interleave(num_generations, 0)
    prompt_mask = enc["attention_mask"].repeat_interleave(num_generations, 0)
    stops = stop_token_ids(tokenizer, model)
    if engine is not None:
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(enc["input_ids"], enc["attention_mask"], strict=True)]
        sampled = engine.sample(model, rows, num_generations, max_new_tokens, temperature, stops)
        width = max(1, max(len(r) for r in sampled))
        completion = torch.tensor(
            [r + [tokenizer.pad_token_id] * (width - len(r)) for r in sampled], device=prompt_ids.device
        )
    else:
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

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        kept = self.stored if self.iterations > 1 else {}  # μ = 1: nothing is replayed
        return {f"{slot}.{k}": v for slot, batch in kept.items() for k, v in batch.items()}, {"calls": self.calls}

    def load_state(self, tensors: dict[str, torch.Tensor], values: dict) -> None:
        self.calls, self.stored = values["calls"], {}
        for name, v in tensors.items():
            slot, key = name.split(".", 1)
            self.stored.setdefault(int(slot), {})[key] = v


def task_prompt(tokenizer, task: dict, data: DataConfig) -> str:
    """The prompt a task is sampled from: the chat template's generation prompt, in data.thinking's mode."""
    return render_prompt(
        tokenizer,
        task["prompt"],
        data.system_prompt,
        tools=task.get("tools"),
        enable_thinking=inference_thinking(data.thinking, task.get("meta", {}).get("enable_thinking")),
    )


def token_char_starts(tokenizer, ids: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """For each row of completion token ids, the character offset in its decoded text where each token starts."""
    return [
        [len(tokenizer.decode(row[:t].tolist(), skip_special_tokens=True)) for t in range(int(n))]
        for row, n in zip(ids, lengths, strict=True)
    ]


def sample_groups(
    run: Run,
    tasks: list[dict],
    g: GRPOConfig,
    fns: list,
    step_fn: Callable | None = None,
    engine: VLLMRollouts | None = None,
) -> dict[str, torch.Tensor]:
    """G scored completions for each task, with group-relative advantages (on the CPU); with a step reward also
    per-token advantages (`token_advantages`: the completion's advantage plus its process advantages)."""
    model = run.accelerator.unwrap_model(run.model)
    prompts = [task_prompt(run.tokenizer, t, run.cfg.data) for t in tasks]
    was_training = model.training
    model.eval()
    batch, completions = sample_completions(
        model, run.tokenizer, prompts, g.num_generations, g.max_completion_length, g.temperature, engine
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

    def state(self) -> dict:
        version, words, gauss = self.rng.getstate()
        return {"rng": [version, list(words), gauss], "order": list(self.order)}

    def load_state(self, values: dict) -> None:
        version, words, gauss = values["rng"]
        self.rng.setstate((version, tuple(words), gauss))
        self.order = list(values["order"])


class RolloutState:
    """What a GRPO resume needs beyond the loop's own checkpoint: the rollouts kept for μ reuse and the position of
    the dynamic-sampling prompt stream (engine/checkpoint.py `RecipeState`)."""

    def __init__(self, reuse: RolloutReuse, pool: PromptPool | None):
        self.reuse, self.pool = reuse, pool

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, reuse = self.reuse.state()
        return tensors, {"reuse": reuse, "pool": self.pool.state() if self.pool else None}

    def load_state(self, tensors: dict[str, torch.Tensor], values: dict) -> None:
        self.reuse.load_state(tensors, values["reuse"])
        if self.pool is not None and values.get("pool"):
            self.pool.load_state(values["pool"])


def rollout_batch(
    run: Run,
    tasks: list[dict],
    g: GRPOConfig,
    fns: list,
    reference: ReferencePolicy | None,
    pool: Callable[[int], list[dict]] | None = None,
    step_fn: Callable | None = None,
    engine: VLLMRollouts | None = None,
):
    """Sample, score, and attach advantages (+ reference and π_old log-probs) for one micro-batch of prompts. With a
    `pool` (dynamic sampling), groups without reward variance are dropped and refilled from it."""
    t0 = time.perf_counter()
    batch = sample_groups(run, tasks, g, fns, step_fn, engine)
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
            batch = sample_groups(run, pool(want - have), g, fns, step_fn, engine)
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
