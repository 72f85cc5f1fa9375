"""Packing: several tokenised samples per fixed-length sequence, none attending to another.

Bins are filled best-fit decreasing (longest sample first, into the fullest bin it still fits), which wastes
little space (Johnson 1974: at most 11/9 OPT + 6/9 bins; Krell et al. 2021 on packing for LLM training).
Each sample keeps its own position ids (0, 1, 2, … restarting per sample) and its length in `seq_lens`, so
attention can be kept inside samples: varlen flash/SDPA kernels read the position-id resets, plain SDPA or eager
attention take the 4-D block-diagonal mask from `collate.block_causal_mask`. The first label of every sample is
-100, so no token is trained to predict the start of the next sample.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from thinktune.data.render import IGNORE, TokenizedSample


@dataclass
class PackedSequence:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    seq_lens: list[int]  # lengths of the samples in order; sum(seq_lens) == len(input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def sample_lengths(samples: Sequence[TokenizedSample]) -> list[int]:
    lengths = getattr(samples, "lengths", None)  # Arrow-backed samples know their lengths without decoding rows
    return list(lengths()) if callable(lengths) else [len(s.input_ids) for s in samples]


def plan_packing(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Sample indices per bin (best-fit decreasing); bins keep their samples in input order."""
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    too_long = [i for i, n in enumerate(lengths) if n > max_length]
    if too_long:
        i = too_long[0]
        raise ValueError(f"sample {i} has {lengths[i]} tokens > max_length={max_length}; reject or cut it first")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin) sorted: the first entry with enough space is the best fit
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k == len(free):
            bins.append([i])
            bisect.insort(free, (max_length - n, len(bins) - 1))
        else:
            space, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (space - n, b))
    return [sorted(b) for b in bins]


def pack_bin(samples: Sequence[TokenizedSample], indices: Sequence[int]) -> PackedSequence:
    ids, labels, positions, lens = [], [], [], []
    for i in indices:
        s = samples[i]
        n = len(s.input_ids)
        ids += s.input_ids
        labels += [IGNORE, *s.labels[1:]]  # the first token is never a target (unpacked, nothing precedes it)
        positions += range(n)
        lens.append(n)
    return PackedSequence(ids, labels, positions, lens)


def pack(samples: Sequence[TokenizedSample], max_length: int) -> list[PackedSequence]:
    """Pack samples into sequences of at most `max_length` tokens (best-fit decreasing)."""
    return [pack_bin(samples, b) for b in plan_packing(sample_lengths(samples), max_length)]
