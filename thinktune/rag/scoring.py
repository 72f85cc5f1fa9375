"""Retrieval recall@k and citation coverage: pure functions over ids, plus the recall table of `thinktune rag eval`.

A gold id names a chunk (`C07#2`) or a whole document (`C07`: any of its chunks counts).
"""

from __future__ import annotations

from collections.abc import Sequence

from thinktune.rag.chunking import Chunk
from thinktune.rag.index import RETRIEVERS, Index, matches


def _names(chunk_id: str, gold: str) -> bool:
    return chunk_id == gold or chunk_id.split("#", 1)[0] == gold


def recall(gold: Sequence[str], retrieved: Sequence[Chunk]) -> float:
    """Share of the gold ids that some retrieved chunk matches (1.0 or 0.0 for one gold id)."""
    if not gold:
        return 0.0
    return sum(any(matches(c, g) for c in retrieved) for g in gold) / len(gold)


def citation_coverage(gold: Sequence[str], cited: Sequence[str]) -> float:
    """Share of the gold ids the answer cites (`[C07]`, or a chunk of that document, `[C07#2]`)."""
    if not gold:
        return 0.0
    return sum(any(_names(c, g) for c in cited) for g in gold) / len(gold)


def recall_table(
    index: Index, questions: Sequence[tuple[str, list[str]]], ks: Sequence[int] = (1, 5), retrievers: Sequence[str] = ()
) -> dict[str, dict[str, float]]:
    """Mean recall@k of each retriever the index has, over (question, gold ids) pairs."""
    names = list(retrievers) or [r for r in RETRIEVERS if r in index.kinds or (r == "hybrid" and len(index.kinds) == 2)]
    top = max(ks)
    table = {}
    for name in names:
        found = index.search_many([q for q, _ in questions], top, name)
        table[name] = {}
        for k in ks:
            total = sum(recall(g, [h.chunk for h in hits[:k]]) for (_, g), hits in zip(questions, found, strict=True))
            table[name][f"recall@{k}"] = total / max(len(questions), 1)
    return table
