"""Retrieval at inference (evaluation, `chat --rag-index`, `serve --rag-index`): the k passages the index ranks best
for the last user message, written into that message the way training wrote them (prompt.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from thinktune.config import RagConfig
from thinktune.rag.index import Hit, Index, open_index
from thinktune.rag.prompt import last_user_text, with_passages


@dataclass
class Retrieval:
    index: Index
    k: int
    retriever: str

    @classmethod
    def open(cls, cfg: RagConfig) -> Retrieval:
        index = open_index(cfg.index)
        return cls(index, cfg.k, index.check_retriever(cfg.retriever))

    def search(self, query: str) -> list[Hit]:
        return self.index.search(query, self.k, self.retriever)

    def augment(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Hit]]:
        """(messages with the passages for their last user message, the passages); unchanged without a user text."""
        query = last_user_text(messages)
        if not query or not query.strip():
            return messages, []
        hits = self.search(query)
        return with_passages(messages, [h.chunk for h in hits]), hits
