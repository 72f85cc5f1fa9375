"""Deterministic, resumable, shardable batch order: epoch e's order depends only on (seed, e).

Resuming = asking for the same epoch and skipping the batches already done; with N processes each takes its slice of
every global batch, so N processes × batch B see exactly what one process with batch N·B sees.
"""

from __future__ import annotations

import math

import torch


def epoch_order(n: int, seed: int, epoch: int, weights: list[float] | None = None) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if weights is not None:
        # Class-balanced sampling: draw n indices with replacement in proportion to the weights.
        w = torch.tensor(weights, dtype=torch.double)
        return torch.multinomial(w, n, replacement=True, generator=g).tolist()
    return torch.randperm(n, generator=g).tolist()


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1, weights: list[float] | None = None
) -> list[list[int]]:
    """This process's micro-batches (lists of sample indices) for one epoch."""
    order = epoch_order(n, seed, epoch, weights)
    global_bs = batch_size * world
    out = []
    for start in range(0, len(order), global_bs):
        chunk = order[start : start + global_bs]
        mine = chunk[rank * batch_size : (rank + 1) * batch_size]
        if not mine:  # a short last global batch: every process still needs a batch to stay in lockstep
            mine = chunk[-1:]
        out.append(mine)
    return out


def batches_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    return math.ceil(n / (batch_size * world))
