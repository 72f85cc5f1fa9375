"""Evaluation tasks: canonical SFT records turned into {prompt, answer, reference} records (+ tools, tool_calls).

With `data.rag` each task's question gets the k passages the index retrieves for it (as chat and serve do) and
`task["rag"]` records them and the record's `gold_ids`, for retrieval recall@k and citation coverage (runner.py)."""

from __future__ import annotations

import json
from typing import Any

from thinktune.config import RagConfig
from thinktune.data.formats import RecordError
from thinktune.data.reading import LoadedRecords, Reject, read_records
from thinktune.eval.reasoning import extract_answer
from thinktune.rag.prompt import gold_ids, last_user_text, with_passages
from thinktune.rag.retrieval import Retrieval


def to_task_record(sft: dict[str, Any]) -> dict[str, Any]:
    """Prompt = messages before the last assistant turn; answer = the record's `answer` field or its boxed answer.

    When that turn makes tool calls, they are the reference (`tool_calls`; `answer` shows them as JSON). The record's
    `tools` go along, so the prompt is rendered with them."""
    msgs = sft["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    calls = msgs[last].get("tool_calls")
    answer = sft["meta"].get("answer")
    if answer is None and calls:
        answer = json.dumps(calls, ensure_ascii=False)
    if answer is None:
        answer = extract_answer(msgs[last]["content"])
    if answer is None:
        raise RecordError("no reference answer: add an 'answer' field or a \\boxed{} answer")
    task = {"prompt": msgs[:last], "answer": str(answer), "messages": msgs[: last + 1], "meta": sft["meta"]}
    if sft.get("tools"):
        task["tools"] = sft["tools"]
    if sft.get("images"):  # a vision-language task: the images of its prompt (and reference turn)
        task["images"] = sft["images"]
    if calls:
        task["tool_calls"] = calls
    return task


def load_tasks(ref: str, fmt: str = "auto", limit: int | None = None, rag: RagConfig | None = None) -> LoadedRecords:
    loaded = read_records(ref, fmt)
    out = LoadedRecords(rejects=list(loaded.rejects))
    for rec in loaded.records:
        try:
            out.records.append(to_task_record(rec))
        except RecordError as e:
            out.rejects.append(Reject(rec["meta"]["source"], rec["meta"]["line"], str(e)))
    if limit:
        out.records = out.records[:limit]
    if rag is not None:
        out.records = with_retrieved(out.records, Retrieval.open(rag))
    return out


def with_retrieved(tasks: list[dict[str, Any]], retrieval: Retrieval) -> list[dict[str, Any]]:
    """Tasks whose question holds the passages retrieved for it; `task["rag"]`: k, retrieved ids, gold ids."""
    queries = [last_user_text(t["prompt"]) or "" for t in tasks]
    found = retrieval.index.search_many(queries, retrieval.k, retrieval.retriever) if tasks else []
    out = []
    for t, hits in zip(tasks, found, strict=True):
        chunks = [h.chunk for h in hits]
        prompt = with_passages(t["prompt"], chunks)
        rag = {"k": retrieval.k, "retrieved": [c.id for c in chunks], "gold": gold_ids(t["meta"])}
        out.append({**t, "prompt": prompt, "messages": prompt + t["messages"][len(t["prompt"]) :], "rag": rag})
    return out
