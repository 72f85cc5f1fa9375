"""Train/test splits without leakage: near-duplicates (and records sharing a group field) never straddle splits.

Records are first clustered — exact duplicates, MinHash/LSH near-duplicates (transitively), and equal values of
`by` — then whole clusters are dealt to the splits in a seeded random order, each to the split furthest below
its target share. Shares are met to within one cluster.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from thinktune.data.balance import MISSING, label_of
from thinktune.data.dedup import duplicate_clusters
from thinktune.data.records import full_text, prompt_text


@dataclass
class SplitResult:
    splits: dict[str, list[dict[str, Any]]]
    clusters: int  # groups dealt out (after merging duplicates and equal `by` values)
    merged: int  # records that shared a group with an earlier record


def parse_ratios(text: str) -> dict[str, float]:
    """`0.9` → train 0.9 / test 0.1; `train=0.8,validation=0.1,test=0.1` → as given (normalised to sum 1)."""
    text = text.strip()
    try:
        if "=" not in text:
            head = float(text)
            if not 0 < head < 1:
                raise ValueError
            return {"train": head, "test": 1 - head}
        pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
        ratios = {name.strip(): float(value) for name, value in pairs}
    except ValueError:
        raise ValueError(f"--ratio {text!r}: expected a fraction like 0.9 or names like train=0.9,test=0.1") from None
    if any(v < 0 for v in ratios.values()) or sum(ratios.values()) <= 0 or any(not k for k in ratios):
        raise ValueError(f"--ratio {text!r}: shares must be >= 0 and not all 0")
    total = sum(ratios.values())
    return {k: v / total for k, v in ratios.items()}


def split_records(
    records: Sequence[dict[str, Any]],
    ratios: Mapping[str, float],
    by: str | None = None,
    seed: int = 0,
    near_dup_threshold: float | None = 0.85,
    on: str = "prompt",
) -> SplitResult:
    """Split records by `ratios`; `on` = "prompt" compares prompts (a question answered twice is one cluster)."""
    text_of = prompt_text if on == "prompt" else full_text
    clusters = duplicate_clusters((text_of(r) for r in records), near_dup_threshold)
    if by:  # records with the same value of `by` join one cluster
        parent: dict[Any, Any] = {}

        def find(x: Any) -> Any:
            parent.setdefault(x, x)
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for i, r in enumerate(records):
            value = label_of(r, by)
            if value != MISSING:
                a, b = find(("by", value)), find(clusters[i])
                if a != b:
                    parent[b] = a
        clusters = [find(c) for c in clusters]
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, c in enumerate(clusters):
        groups[c].append(i)
    order = list(groups)
    random.Random(seed).shuffle(order)
    target = {name: share * len(records) for name, share in ratios.items()}
    filled = dict.fromkeys(ratios, 0)
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in ratios}
    for c in order:
        name = max(target, key=lambda n: (target[n] - filled[n]) / target[n] if target[n] else float("-inf"))
        for i in groups[c]:
            out[name].append(records[i])
        filled[name] += len(groups[c])
    return SplitResult(out, len(groups), len(records) - len(groups))
