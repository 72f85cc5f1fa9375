"""Per-request sampling inside one batched `generate()` call.

`generate()` applies one temperature / top-p / top-k to the whole batch. To batch requests that asked for different
ones, `RowSampler` (a LogitsProcessor) picks every row's next token itself — its own temperature, top-k, top-p,
repetition penalty and random generator (so `seed` reproduces a request) — and leaves that token as the only finite
score; `generate()` then runs greedy and its argmax takes exactly that token.

A request that runs alone (speculative decoding) uses `SamplingParams.generate_kwargs()` instead: generate()'s own
temperature / top-k / top-p / repetition penalty, seeded by the engine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # keep going past end-of-turn (benchmarks); the end tokens are masked out

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generate_kwargs(self, stop_ids: list[int]) -> dict:
        """This request's sampling as `generate()`'s own arguments, for a call that runs it alone (speculative
        decoding: transformers' processors also judge the drafts, which RowSampler's one-hot scores would not let
        them do). Same order as RowSampler: repetition penalty, temperature, top-k, top-p."""
        kwargs: dict = {"temperature": None, "top_p": None, "top_k": None}
        if not self.greedy:
            kwargs = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        else:
            kwargs["do_sample"] = False
        kwargs["repetition_penalty"] = self.repetition_penalty if self.repetition_penalty != 1 else None
        if self.ignore_eos:
            kwargs["suppress_tokens"] = list(stop_ids)
        return kwargs


class RowSampler(LogitsProcessor):
    def __init__(self, params: list[SamplingParams], stop_ids: list[int], device: torch.device | str = "cpu"):
        self.params = params
        self.stop_ids = torch.tensor(stop_ids, dtype=torch.long)
        self.generators = []
        for p in params:
            g = torch.Generator(device=device)
            g.manual_seed(p.seed if p.seed is not None else random.getrandbits(63))
            self.generators.append(g)
        self.temperature = torch.tensor([p.temperature or 1.0 for p in params]).unsqueeze(1)
        self.penalty = torch.tensor([p.repetition_penalty for p in params]).unsqueeze(1)
        self.truncates = any(p.top_k > 0 or p.top_p < 1 for p in params if not p.greedy)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        device = scores.device
        if (self.penalty != 1).any():
            # CTRL repetition penalty (Keskar et al. 2019): shrink the logits of tokens already in the sequence.
            penalty = self.penalty.to(device)
            seen = torch.gather(scores, 1, input_ids)
            seen = torch.where(seen < 0, seen * penalty, seen / penalty)
            scores = scores.scatter(1, input_ids, seen)
        ignore = [i for i, p in enumerate(self.params) if p.ignore_eos]
        if ignore and len(self.stop_ids):
            rows = torch.tensor(ignore, device=device)
            scores[rows.unsqueeze(1), self.stop_ids.to(device).unsqueeze(0)] = NEG_INF
        chosen = scores.argmax(dim=-1)
        sampled = [i for i, p in enumerate(self.params) if not p.greedy]
        if sampled:
            logits = scores[sampled] / self.temperature.to(device)[sampled]
            order = None
            if self.truncates:
                logits, order = self._truncate(logits, [self.params[i] for i in sampled])
            probs = torch.softmax(logits, dim=-1)
            for row, i in enumerate(sampled):
                pick = torch.multinomial(probs[row], 1, generator=self.generators[i])
                chosen[i] = order[row, pick] if order is not None else pick
        out = torch.full_like(scores, NEG_INF)
        out[torch.arange(len(chosen), device=device), chosen] = 0.0
        return out

    @staticmethod
    def _truncate(logits: torch.Tensor, params: list[SamplingParams]) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k then top-p (nucleus, Holtzman et al. 2020), per row, on logits sorted in descending order."""
        logits, order = torch.sort(logits, dim=-1, descending=True)
        rank = torch.arange(logits.shape[-1], device=logits.device).unsqueeze(0)
        k = torch.tensor([p.top_k if p.top_k > 0 else logits.shape[-1] for p in params], device=logits.device)
        logits = logits.masked_fill(rank >= k.unsqueeze(1), NEG_INF)
        top_p = torch.tensor([p.top_p for p in params], device=logits.device).unsqueeze(1)
        probs = torch.softmax(logits, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above; the first token always stays
        logits = logits.masked_fill(before >= top_p, NEG_INF)
        return logits, order
