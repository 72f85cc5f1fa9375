"""The three canonical record kinds, and what every stage after reading asks of a record whatever its kind.

    sft         {"messages": [...], "meta"}
    preference  {"prompt": [...], "chosen": message, "rejected": message, "meta"}
    task        {"prompt": [...], "answer": str, "meta"}

`to_record` turns one raw row into a record of the wanted kind (through the column mapping when there is one);
`conversation`, `prompt_text`, `answer_text` and `to_row` let cleaning, statistics and writers treat all kinds alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from thinktune.data.columns import apply_columns
from thinktune.data.formats import FORMATS, RecordError, to_sft_record
from thinktune.data.preference import PREFERENCE_FORMATS, to_preference_record
from thinktune.data.spec import ColumnMap
from thinktune.data.task import TASK_FORMATS, to_task_record

Kind = Literal["sft", "preference", "task"]
KINDS: dict[str, tuple[dict[str, Callable], Callable[[Any, str], dict[str, Any]]]] = {
    "sft": (FORMATS, to_sft_record),
    "preference": (PREFERENCE_FORMATS, to_preference_record),
    "task": (TASK_FORMATS, to_task_record),
}
# Keys of a record's meta that say where it came from; writers drop them (they are set again on reading).
PROVENANCE = ("source", "line", "format")


def format_names(kind: str) -> list[str]:
    names = list(KINDS[kind][0])
    if kind == "task":  # SFT formats read as conversations with an answer field
        names += [n for n in FORMATS if n not in names]
    return names


def check_format(fmt: str, kind: str, where: str = "--format") -> None:
    from thinktune.errors import DataError

    if kind not in KINDS:
        raise DataError(f"unknown record kind {kind!r} (choose from {', '.join(KINDS)})")
    if fmt != "auto" and fmt not in format_names(kind):
        raise DataError(
            f"{where} {fmt}: unknown format for {kind} data (choose from auto, {', '.join(format_names(kind))})"
        )


def to_record(raw: Any, kind: str = "sft", fmt: str = "auto", columns: ColumnMap | None = None) -> dict[str, Any]:
    """One raw row → one canonical record of `kind`; raises RecordError with the reason when it cannot."""
    convert = KINDS[kind][1]
    if columns is None:
        return convert(raw, fmt)
    row, mapped_fmt, extra = apply_columns(raw, columns, kind)
    rec = convert(row, mapped_fmt)
    rec["meta"] = {**extra, **{k: v for k, v in rec["meta"].items() if k != "format"}, "format": "columns"}
    return rec


def record_kind(rec: dict[str, Any]) -> str:
    if "messages" in rec:
        return "sft"
    return "preference" if "chosen" in rec else "task"


def conversation(rec: dict[str, Any], which: str = "chosen") -> list[dict[str, Any]]:
    """The record as one conversation: SFT as is, a pair's prompt + chosen (or rejected), a task's prompt + answer."""
    kind = record_kind(rec)
    if kind == "sft":
        return rec["messages"]
    if kind == "preference":
        return [*rec["prompt"], rec[which]]
    return [*rec["prompt"], {"role": "assistant", "content": rec["answer"], "reasoning": None}]


def _last_assistant(msgs: list[dict[str, Any]]) -> int:
    return max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs))


def prompt_text(rec: dict[str, Any]) -> str:
    """Everything before the (last) answer: system and user turns, earlier answers."""
    msgs = conversation(rec)
    return "\n".join(f"{m['role']}: {m['content']}" for m in msgs[: _last_assistant(msgs)])


def answer_text(rec: dict[str, Any]) -> str:
    """The final answer with its reasoning (for preference pairs: the chosen one)."""
    msgs = conversation(rec)
    i = _last_assistant(msgs)
    if i == len(msgs):
        return ""
    m = msgs[i]
    return f"{m['reasoning'] or ''}\n{m['content']}".strip()


def full_text(rec: dict[str, Any]) -> str:
    parts = [f"{m['role']}: {m['reasoning'] or ''}\n{m['content']}" for m in conversation(rec)]
    if record_kind(rec) == "preference":
        parts.append(f"rejected: {rec['rejected']['reasoning'] or ''}\n{rec['rejected']['content']}")
    return "\n".join(parts)


def map_texts(rec: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    """A copy of the record with `fn` applied to every content and reasoning string (and a task's answer)."""

    def msg(m: dict[str, Any]) -> dict[str, Any]:
        return {**m, "content": fn(m["content"]), "reasoning": fn(m["reasoning"]) if m["reasoning"] else m["reasoning"]}

    out = dict(rec)
    for key in ("messages", "prompt"):
        if key in rec:
            out[key] = [msg(m) for m in rec[key]]
    for key in ("chosen", "rejected"):
        if key in rec:
            out[key] = msg(rec[key])
    if "answer" in rec:
        out["answer"] = fn(rec["answer"])
    return out


def _row_message(m: dict[str, Any]) -> dict[str, Any]:
    out = {"role": m["role"], "content": m["content"]}
    if m["reasoning"] is not None:
        out["reasoning_content"] = m["reasoning"]
    if m.get("tool_calls"):
        out["tool_calls"] = m["tool_calls"]
    if m.get("train") is False:
        out["loss_weight"] = 0
    return out


def to_row(rec: dict[str, Any]) -> dict[str, Any]:
    """A canonical record as a JSON row that reads back (format auto) into the same record."""
    meta = {k: v for k, v in rec["meta"].items() if k not in PROVENANCE}
    if "source" in rec["meta"] and "origin" not in meta:
        meta["origin"] = f"{rec['meta']['source']}:{rec['meta'].get('line')}"
    kind = record_kind(rec)
    if kind == "sft":
        tools = {"tools": rec["tools"]} if rec.get("tools") else {}
        images = {"images": rec["images"]} if rec.get("images") else {}
        return {"messages": [_row_message(m) for m in rec["messages"]], **images, **tools, **meta}
    if kind == "preference":
        body = {"chosen": _row_message(rec["chosen"]), "rejected": _row_message(rec["rejected"])}
        return {"prompt": [_row_message(m) for m in rec["prompt"]], **body, **meta}
    return {"prompt": [_row_message(m) for m in rec["prompt"]], "answer": rec["answer"], **meta}


def strip_reasoning(rec: dict[str, Any]) -> dict[str, Any]:
    """The record with every reasoning removed (what a model trained without thinking sees)."""
    out = dict(rec)
    for key in ("messages", "prompt"):
        if key in rec:
            out[key] = [{**m, "reasoning": None} for m in rec[key]]
    for key in ("chosen", "rejected"):
        if key in rec:
            out[key] = {**rec[key], "reasoning": None}
    return out


__all__ = ["RecordError", "to_record", "KINDS", "Kind"]
