"""Passages in a prompt, and the ids an answer cites. Training (data/passages.py), evaluation, chat and serve all
write passages with `with_passages`, so the model sees at inference exactly the format it was trained on:

    Passages (cite the ones you use by their id in brackets, e.g. [C07]):
    [C07] Either party may terminate this Agreement for convenience on sixty (60) days' written notice.

    [C12] ...

    Question: <the user's message>

The block goes into the last user message, before its text; earlier turns stay as they were.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from thinktune.rag.chunking import Chunk

HEADER = "Passages (cite the ones you use by their id in brackets, e.g. [{example}]):"


def passages_block(chunks: Sequence[Chunk]) -> str:
    example = chunks[0].id if chunks else "C01"
    body = "\n\n".join(f"[{c.id}] {' '.join(c.text.split())}" for c in chunks)
    return f"{HEADER.format(example=example)}\n{body}"


def with_passages(messages: list[dict[str, Any]], chunks: Sequence[Chunk]) -> list[dict[str, Any]]:
    """The messages with the passages block put into the last user message (a copy; the input is not changed)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None:
        return list(messages)
    out = list(messages)
    out[last] = {**messages[last], "content": f"{passages_block(chunks)}\n\nQuestion: {messages[last]['content']}"}
    return out


def last_user_text(messages: list[dict[str, Any]]) -> str | None:
    """The query retrieval runs for: the text of the last user message."""
    for m in reversed(messages):
        if m["role"] == "user":
            content = m["content"]
            return content if isinstance(content, str) else None
    return None


def question_turn(messages: list[dict[str, Any]]) -> tuple[int, str] | None:
    """(index of the last assistant message, text of the user message before it): the question a training record's
    answer rests on; None when there is no such pair."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    user = next((i for i in range(last - 1, -1, -1) if messages[i]["role"] == "user"), None) if last else None
    if user is None or not isinstance(messages[user]["content"], str):
        return None
    return last, messages[user]["content"]


def cited_ids(text: str) -> list[str]:
    """Ids cited as [ID] in an answer, in order of first citation; `[C07, C12]` and `[C07][C12]` both count."""
    out: list[str] = []
    for group in re.findall(r"\[([^\[\]]+)\]", text):
        for part in re.split(r"[,;]\s*|\s+", group.strip()):
            if part and part not in out:
                out.append(part)
    return out


def gold_ids(meta: dict[str, Any]) -> list[str]:
    """A record's gold passage ids: `meta.gold_ids` as a list or one id (empty when absent)."""
    value = meta.get("gold_ids")
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [str(v) for v in items if str(v).strip()]
