"""Column mappings: a row whose fields have other names is rewritten into one of the known shapes.

The result is read by an ordinary adapter (alpaca / messages for SFT, prompt_chosen_rejected for preference,
prompt_answer for tasks); columns the mapping does not name are kept in `meta`. Turns are read with LLaMA-Factory's
tags: a `function_call` turn becomes an assistant message with tool calls, an `observation` turn a `tool` message.
Errors name the source column, so a user sees `column 'q' (prompt) must be a string, got int`, not the internal field.
"""

from __future__ import annotations

from typing import Any

from thinktune.data.formats import RecordError
from thinktune.data.spec import ColumnMap

USER_TAGS = ("user", "human")
ASSISTANT_TAGS = ("assistant", "gpt")
SYSTEM_TAGS = ("system",)
OBSERVATION_TAGS = ("observation", "tool")  # a tool's result
FUNCTION_TAGS = ("function_call",)  # the assistant's tool call(s), LLaMA-Factory style
FUNCTION = "function_call"  # the internal role of a function turn until it becomes an assistant message


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


def _roles(cols: ColumnMap) -> dict[Any, str]:
    """Role value in the data → canonical role (or FUNCTION), from the mapping's tags or the usual spellings."""
    pairs = (
        (cols.user_tag, USER_TAGS, "user"),
        (cols.assistant_tag, ASSISTANT_TAGS, "assistant"),
        (cols.system_tag, SYSTEM_TAGS, "system"),
        (cols.observation_tag, OBSERVATION_TAGS, "tool"),
        (cols.function_tag, FUNCTION_TAGS, FUNCTION),
    )
    return {t: role for tag, defaults, role in pairs for t in ((tag,) if tag else defaults)}


def _turn(turn: Any, cols: ColumnMap, roles: dict[Any, str], where: str) -> dict[str, Any]:
    """One turn as a message row for formats.from_messages (which validates it)."""
    if not isinstance(turn, dict):
        raise RecordError(f"{where} must be an object")
    role_key = cols.role_tag or ("role" if "role" in turn else "from")
    content_key = cols.content_tag or ("content" if "content" in turn else "value")
    if role_key not in turn or (content_key not in turn and not turn.get("tool_calls")):
        raise RecordError(f"{where} needs '{role_key}' and '{content_key}'")
    role = roles.get(turn[role_key])
    if role is None:
        raise RecordError(f"{where}: unknown role {turn[role_key]!r} (expected one of {', '.join(map(str, roles))})")
    if role == FUNCTION:  # the value is the call (or a list of calls), usually as a JSON string
        return {"role": "assistant", "content": "", "tool_calls": turn[content_key] or None}
    msg = {"role": role, "content": turn.get(content_key)}
    for key in ("reasoning_content", "tool_calls"):
        if key in turn:
            msg[key] = turn[key]
    return msg


def _turns(raw: dict[str, Any], cols: ColumnMap, column: str, field: str) -> list[dict[str, Any]]:
    turns = raw.get(column)
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"column '{column}' ({field}) must be a non-empty list of turns")
    roles = _roles(cols)
    return [_turn(t, cols, roles, f"column '{column}'[{i}]") for i, t in enumerate(turns)]


def _history(raw: dict[str, Any], cols: ColumnMap) -> list[dict[str, Any]]:
    """Alpaca `history`: earlier [prompt, response] pairs, as turns."""
    pairs = raw.get(cols.history) if cols.history else None
    if not pairs:
        return []
    out = []
    for i, pair in enumerate(pairs if isinstance(pairs, list) else [pairs]):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RecordError(f"column '{cols.history}'[{i}] (history) must be a [prompt, response] pair of strings")
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return out


def kto_label(raw: Any, cols: ColumnMap) -> bool:
    """Whether a KTO row's answer is desirable (LLaMA-Factory's `kto_tag` column)."""
    value = raw.get(cols.kto_tag) if isinstance(raw, dict) and cols.kto_tag else None
    if not isinstance(value, bool):
        got = "missing" if value is None else f"got {value!r}"
        raise RecordError(f"column '{cols.kto_tag}' (kto_tag) must be true or false, {got}")
    return value


def _prompt(raw: dict[str, Any], cols: ColumnMap) -> str | list[dict[str, Any]]:
    if cols.messages:
        return _turns(raw, cols, cols.messages, "messages")
    prompt = _get(raw, cols.prompt, "prompt", required=True)
    query = _get(raw, cols.query, "query")
    text = f"{prompt}\n\n{query}" if query and query.strip() else prompt
    history = _history(raw, cols)
    return [*history, {"role": "user", "content": text}] if history else text


def _answer_turn(value: Any, cols: ColumnMap, column: str, field: str) -> Any:
    """A preference answer given as a turn object is read with the mapping's tags; a string stays a string."""
    return _turn(value, cols, _roles(cols), f"column '{column}' ({field})") if isinstance(value, dict) else value


def apply_columns(raw: Any, cols: ColumnMap, kind: str = "sft") -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(row in a known shape, the adapter's format name, the unmapped columns for meta)."""
    if not isinstance(raw, dict):
        raise RecordError(f"record must be a JSON object, got {type(raw).__name__}")
    extra = {k: v for k, v in raw.items() if k not in cols.source_columns()}
    system = _get(raw, cols.system, "system")
    answer = _get(raw, cols.answer, "answer")
    tools = raw.get(cols.tools) if cols.tools else None
    images = raw.get(cols.images) if cols.images else None
    if images not in (None, "", []) and kind != "sft":
        raise RecordError(f"column '{cols.images}' (images): images are read in SFT conversations only")
    media = {"images": images} if images not in (None, "", []) else {}
    if answer is not None and kind != "task":  # a task's answer is a field of its own
        extra["answer"] = answer
    if tools not in (None, "", [], "[]") and kind != "sft":  # only conversations carry tools: keep them as meta
        extra["tools"] = tools
    if kind == "preference":
        chosen = raw.get(cols.chosen) if cols.chosen else None
        rejected = raw.get(cols.rejected) if cols.rejected else None
        for column, value, field in ((cols.chosen, chosen, "chosen"), (cols.rejected, rejected, "rejected")):
            if not column:
                raise RecordError(f"the column mapping has no '{field}' column")
            if value is None:
                raise RecordError(f"column '{column}' ({field}) is missing")
        chosen = _answer_turn(chosen, cols, cols.chosen, "chosen")
        rejected = _answer_turn(rejected, cols, cols.rejected, "rejected")
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
        return {"messages": msgs, "tools": tools, **media}, "messages", extra
    row = {
        "instruction": _get(raw, cols.prompt, "prompt", required=True),
        "input": _get(raw, cols.query, "query") or "",
        "output": _get(raw, cols.response, "response", required=True),
        "system": system,
        "reasoning_content": _get(raw, cols.reasoning, "reasoning"),
        **media,
    }
    history = _history(raw, cols)
    if history or tools not in (None, "", [], "[]"):  # the alpaca adapter has neither: write the conversation out
        prompt = f"{row['instruction']}\n\n{row['input']}" if row["input"].strip() else row["instruction"]
        answer_turn = {"role": "assistant", "content": row["output"], "reasoning_content": row["reasoning_content"]}
        msgs = [*([{"role": "system", "content": system}] if system else []), *history]
        msgs += [{"role": "user", "content": prompt}, answer_turn]
        return {"messages": msgs, "tools": tools, **media}, "messages", extra
    return row, "alpaca", extra
