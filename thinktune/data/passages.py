"""Training prompts with retrieved passages (`data.rag`), as in RAFT (Zhang et al. 2024): each record's question
gets its gold passages plus distractors — the chunks the index ranks best for the question that are not gold —, and
a share `1 - gold_fraction` of the records sees distractors only, so the model learns to answer from the passages
it is given and to ignore the ones that do not help. Every prompt shows `distractors + 1` passages (all of the gold
ones where a record names several), in a seeded shuffled order; the format is rag/prompt.py's, the one evaluation,
chat and serve use.

The gold passages are the record's `gold_ids` field (meta): chunk ids (`C07#2`) or document ids (`C07`, its
best-ranked chunk for the question). A record without gold ids, or naming an id the index lacks, is a reject with
its file and line. The answer should cite what it uses as `[C07]`: that is what citation coverage measures.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from thinktune.config import RagConfig
from thinktune.data.reading import Reject
from thinktune.data.record_error import RecordError
from thinktune.rag.index import Index, manifest_digest, open_index
from thinktune.rag.prompt import gold_ids, question_turn, with_passages


def rag_key(cfg: RagConfig) -> dict[str, Any]:
    """What the data cache keys on: the settings and the index's contents."""
    return {"settings": cfg.model_dump(), "index": manifest_digest(cfg.index)}


def question_of(rec: dict[str, Any]) -> tuple[int, str]:
    """(index of the last assistant message, the user question before it), or the record's RecordError."""
    found = question_turn(rec["messages"])
    if found is None:
        raise RecordError("data.rag: no user question before the answer to retrieve passages for")
    return found


class PassageAdder:
    """Puts passages into SFT records; seeded by `seed` and each record's file and line, so a rebuild is identical."""

    def __init__(self, cfg: RagConfig, seed: int, index: Index | None = None) -> None:
        self.cfg, self.seed = cfg, seed
        self.index = index or open_index(cfg.index)
        self.retriever = self.index.check_retriever(cfg.retriever)

    def __call__(self, rec: dict[str, Any]) -> dict[str, Any]:
        gold = gold_ids(rec["meta"])
        if not gold:
            raise RecordError("data.rag: no gold_ids (the ids of the passages the answer rests on)")
        last, question = question_of(rec)
        [ranking] = self.index.rankings([question], self.retriever)
        rank = {i: r for r, (i, _) in enumerate(ranking)}
        gold_chunks = []
        for g in gold:
            found = self.index.chunks_of(g)
            if not found:
                raise RecordError(f"data.rag: gold id {g!r} is not in the index {self.cfg.index}")
            gold_chunks.append(min(found, key=lambda i: (rank.get(i, len(rank)), i)))
        meta = rec["meta"]
        rng = np.random.default_rng([self.seed, zlib.crc32(f"{meta.get('source')}:{meta.get('line')}".encode())])
        keep = bool(rng.random() < self.cfg.gold_fraction)
        excluded = {i for g in gold for i in self.index.chunks_of(g)}
        wanted = self.cfg.distractors + (0 if keep else 1)
        others = [i for i, _ in ranking if i not in excluded]
        if len(others) < wanted:  # BM25 ranks only chunks sharing a term: fill up in index order
            ranked = set(others)
            others += [i for i in range(len(self.index.chunks)) if i not in excluded and i not in ranked]
        chosen = (list(dict.fromkeys(gold_chunks)) if keep else []) + others[:wanted]
        chosen = [chosen[i] for i in rng.permutation(len(chosen))]
        chunks = [self.index.chunks[i] for i in chosen]
        messages = with_passages(rec["messages"][:last], chunks) + rec["messages"][last:]
        rag = {"passages": [c.id for c in chunks], "gold_kept": keep}
        return {**rec, "messages": messages, "meta": {**meta, "rag": rag}}

    def stream(self, items: Iterable[dict[str, Any] | Reject]) -> Iterator[dict[str, Any] | Reject]:
        for item in items:
            if isinstance(item, Reject):
                yield item
                continue
            try:
                yield self(item)
            except RecordError as e:
                yield Reject(item["meta"]["source"], item["meta"]["line"], str(e))
