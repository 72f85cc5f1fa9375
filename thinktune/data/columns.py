"""Column mappings: a row whose fields have other names is rewritten into one of the known shapes.

The result is read by an ordinary adapter (alpaca / messages for SFT, prompt_chosen_rejected for preference,
prompt_answer for tasks); columns the mapping does not name are kept in `meta`. Errors name the source column,
so a user sees `column 'q' (prompt) must be a string, got int`, not the internal field.
"""

from __future__ import annotations

from typing import Any

from thinktune.data.formats import RecordError
from thinktune.data.spec import ColumnMap

USER_TAGS = ("user", "human")
ASSISTANT_TAGS = ("assistant", "gpt")
SYSTEM_TAGS = ("system",)


def _get(raw: dict[str, Any], column: str | None, field: str, required: bool = False, kind: type = str) -> Any:
    if not column:
        if required:
            raise RecordError(f"the column mapping has no '{field}' column")
        return None
    if column not in raw or raw[column] is None:
        if required:
            raise RecordError(f"column '{column}' ({field}) is missing")
        return None
    value = raw[column]
    if kind is str and isinstance(value, int | float) and not isinstance(value, bool) and field == "answer":
        value = str(value)  # numeric reference answers are common in task sets
    if kind is str and not isinstance(value, str):
        raise RecordError(f"column '{column}' ({field}) must be a string, got {type(value).__name__}")
    return value


def _turns(raw: dict[str, Any], cols: ColumnMap, column: str, field: str) -> list[dict[str, Any]]:
    turns = raw.get(column)
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"column '{column}' ({field}) must be a non-empty list of turns")
    roles = {
        **{t: "user" for t in ((cols.user_tag,) if cols.user_tag else USER_TAGS)},
        **{t: "assistant" for t in ((cols.assistant_tag,) if cols.assistant_tag else ASSISTANT_TAGS)},
        **{t: "system" for t in ((cols.system_tag,) if cols.system_tag else SYSTEM_TAGS)},
    }
    out = []
    for i, turn in enumerate(turns):
        where = f"column '{column}'[{i}]"
        if not isinstance(turn, dict):
            raise RecordError(f"{where} must be an object")
        role_key = cols.role_tag or ("role" if "role" in turn else "from")
        content_key = cols.content_tag or ("content" if "content" in turn else "value")
        if role_key not in turn or content_key not in turn:
            raise RecordError(f"{where} needs '{role_key}' and '{content_key}'")
        role = roles.get(turn[role_key])
        if role is None:
            raise RecordError(f"{where}: unknown role {turn[role_key]!r} (expected one of {', '.join(roles)})")
        msg = {"role": role, "content": turn[content_key]}
        if "reasoning_content" in turn:
            msg["reasoning_content"] = turn["reasoning_content"]
        out.append(msg)
    return out


def _prompt(raw: dict[str, Any], cols: ColumnMap) -> str | list[dict[str, Any]]:
    if cols.messages:
        return _turns(raw, cols, cols.messages, "messages")
    prompt = _get(raw, cols.prompt, "prompt", required=True)
    query = _get(raw, cols.query, "query")
    return f"{prompt}\n\n{query}" if query and query.strip() else prompt


def apply_columns(raw: Any, cols: ColumnMap, kind: str = "sft") -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(row in a known shape, the adapter's format name, the unmapped columns for meta)."""
    if not isinstance(raw, dict):
        raise RecordError(f"record must be a JSON object, got {type(raw).__name__}")
    extra = {k: v for k, v in raw.items() if k not in cols.source_columns()}
    system = _get(raw, cols.system, "system")
    answer = _get(raw, cols.answer, "answer")
    if answer is not None and kind != "task":  # a task's answer is a field of its own
        extra["answer"] = answer
    if kind == "preference":
        chosen = raw.get(cols.chosen) if cols.chosen else None
        rejected = raw.get(cols.rejected) if cols.rejected else None
        for column, value, field in ((cols.chosen, chosen, "chosen"), (cols.rejected, rejected, "rejected")):
            if not column:
                raise RecordError(f"the column mapping has no '{field}' column")
            if value is None:
                raise RecordError(f"column '{column}' ({field}) is missing")
        row = {"prompt": _prompt(raw, cols), "chosen": chosen, "rejected": rejected, "system": system}
        return row, "prompt_chosen_rejected", extra
    if kind == "task":
        if answer is None:
            raise RecordError(f"column '{cols.answer}' (answer) is missing" if cols.answer else "no 'answer' column")
        return {"prompt": _prompt(raw, cols), "answer": answer, "system": system}, "prompt_answer", extra
    if cols.messages:
        msgs = _turns(raw, cols, cols.messages, "messages")
        if system and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": system})
        return {"messages": msgs}, "messages", extra
    row = {
        "instruction": _get(raw, cols.prompt, "prompt", required=True),
        "input": _get(raw, cols.query, "query") or "",
        "output": _get(raw, cols.response, "response", required=True),
        "system": system,
        "reasoning_content": _get(raw, cols.reasoning, "reasoning"),
    }
    return row, "alpaca", extra
