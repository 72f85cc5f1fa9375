"""Input formats: each is a small adapter from one raw JSON object to the canonical SFT record.

Canonical SFT record: {"messages": [{"role", "content", "reasoning"}], "meta": {...}}, plus where the data has them:
`tools` on the record (OpenAI tool definitions), `tool_calls` on an assistant message (`[{"name", "arguments"}]`),
`train: False` on an assistant message that is context only (LLaMA-Factory's `loss_weight: 0`), and
`meta.enable_thinking` (bool) when a record says which thinking mode it is written in. A `tool` message holds a
tool's result and must follow an assistant message with tool calls.
Add a format = one function + one entry in FORMATS (+ one DETECT line if it can be recognised by its fields).
Preference pairs and prompt+answer tasks have their own registries (preference.py, task.py); records.py dispatches.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from thinktune.data.images import IMAGE_PARTS, IMAGE_TOKEN, collect_images, part_image
from thinktune.data.record_error import RecordError
from thinktune.data.tool_calls import parse_calls, parse_tools

ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "function_call": "assistant", "observation": "tool", "tool": "tool",
}  # fmt: skip
THINK = re.compile(r"^\s*<think>(.*?)</think>\s*(.*)$", re.DOTALL)
# Content parts: OpenAI's {"type": "text", "text"}; LLaMA-Factory's {"type": "text"|"reasoning"|"tool_call", "value"};
# images, OpenAI's {"type": "image_url", "image_url": {"url"}} or {"type": "image", "image"} (images.py).
PART_TYPES = ("text", "reasoning", "tool_call", *IMAGE_PARTS)


def split_think(content: str) -> tuple[str | None, str]:
    """Split inline `<think>…</think>` off the front of an assistant message."""
    m = THINK.match(content)
    if not m:
        if "<think>" in content and "</think>" not in content:
            raise RecordError("assistant message opens <think> but never closes it")
        return None, content
    return m.group(1).strip(), m.group(2).strip()


def content_parts(parts: list[Any], where: str) -> tuple[str, str | None, list[dict[str, Any]], list[str]]:
    """(text, reasoning or None, tool calls, images) of a list of content parts; an image part leaves an `<image>`
    placeholder at its place in the text."""
    text, reasoning, calls, images = [], [], [], []
    for j, part in enumerate(parts):
        at = f"{where}content[{j}]: "
        if not isinstance(part, dict):
            raise RecordError(f"{at}a content part must be an object")
        kind = part.get("type")
        if kind not in PART_TYPES:
            raise RecordError(f"{at}unknown content part type {kind!r} (expected {', '.join(PART_TYPES)})")
        if kind in IMAGE_PARTS:
            images.append(part_image(part, at))
            text.append(IMAGE_TOKEN)
            continue
        value = part.get("text", part.get("value"))
        if kind == "tool_call":
            calls += parse_calls(value, at)
            continue
        if not isinstance(value, str):
            raise RecordError(f"{at}a {kind} part needs a string 'value' (or 'text')")
        (reasoning if kind == "reasoning" else text).append(value)
    return "".join(text), ("\n".join(reasoning) if reasoning else None), calls, images


def message(
    role: Any,
    content: Any,
    reasoning: Any = None,
    where: str = "",
    tool_calls: Any = None,
    loss_weight: Any = None,
    images_ok: bool = False,
) -> dict[str, Any]:
    """One canonical message, validated; `where` prefixes the reason (e.g. "messages[2]: "). `images_ok`: image
    content parts are read (SFT conversations; the record collects them, collect_images)."""
    if role not in ROLES:
        raise RecordError(f"{where}unknown role {role!r} (expected system, user, assistant or tool)")
    calls = parse_calls(tool_calls, f"{where}tool_calls: ") if tool_calls else []
    images: list[str] = []
    if isinstance(content, list):
        content, part_reasoning, part_calls, images = content_parts(content, where)
        if images and not images_ok:
            raise RecordError(f"{where}image content parts are read in SFT conversations only; this record is text")
        reasoning = reasoning if reasoning is not None else part_reasoning
        calls += part_calls
    if content is None and calls:
        content = ""
    if not isinstance(content, str):
        raise RecordError(f"{where}content must be a string, got {type(content).__name__}")
    if reasoning is not None and not isinstance(reasoning, str):
        raise RecordError(f"{where}reasoning_content must be a string")
    if calls and role != "assistant":
        raise RecordError(f"{where}only assistant messages make tool calls")
    if role == "assistant" and reasoning is None:
        reasoning, content = split_think(content)
    if role == "assistant" and not content.strip() and not (reasoning or "").strip() and not calls:
        raise RecordError(f"{where}empty assistant message")
    out: dict[str, Any] = {"role": role, "content": content, "reasoning": reasoning or None}
    if calls:
        out["tool_calls"] = calls
    if images:
        out["images"] = images  # moved onto the record by collect_images
    if loss_weight is not None:
        if isinstance(loss_weight, bool) or not isinstance(loss_weight, int | float) or loss_weight not in (0, 1):
            raise RecordError(f"{where}loss_weight must be 0 or 1, got {loss_weight!r}")
        if loss_weight == 0 and role == "assistant":
            out["train"] = False
        elif loss_weight == 1 and role != "assistant":
            raise RecordError(f"{where}loss_weight 1 on a {role} message: only assistant messages are trained")
    return out


def check_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError("no assistant message to learn from")
    if not any(m["role"] == "user" for m in messages):
        raise RecordError("no user message")
    last_speaker = None
    for i, m in enumerate(messages):
        if m["role"] == "tool" and not (last_speaker and last_speaker.get("tool_calls")):
            raise RecordError(f"messages[{i}]: a tool message without a preceding assistant tool call")
        if m["role"] in ("user", "assistant", "system"):
            last_speaker = m
    return messages


def record_extras(raw: dict[str, Any]) -> dict[str, Any]:
    """Record-level fields every conversation format may carry: `tools` and `enable_thinking`."""
    out: dict[str, Any] = {}
    if raw.get("tools") not in (None, "", [], "[]"):
        out["tools"] = parse_tools(raw["tools"])
    flag = raw.get("enable_thinking")
    if flag is not None and not isinstance(flag, bool):
        raise RecordError(f"field 'enable_thinking' must be true or false, got {flag!r}")
    return out


def from_messages(raw: dict[str, Any]) -> dict[str, Any]:
    msgs = raw.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RecordError("field 'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise RecordError(f"messages[{i}] must be an object")
        if "content" not in m and not m.get("tool_calls"):
            raise RecordError(f"messages[{i}]: missing field 'content'")
        reasoning = m.get("reasoning_content", m.get("reasoning"))
        out.append(
            message(
                m.get("role"),
                m.get("content"),
                reasoning,
                f"messages[{i}]: ",
                m.get("tool_calls"),
                m.get("loss_weight"),
                images_ok=True,
            )
        )
    images = collect_images(out, raw)
    return {"messages": check_turns(out), **images, **record_extras(raw), "meta": _meta(raw, "messages")}


def from_alpaca(raw: dict[str, Any]) -> dict[str, Any]:
    for key in ("instruction", "output"):
        if not isinstance(raw.get(key), str):
            raise RecordError(f"field '{key}' must be a string")
    prompt = raw["instruction"]
    if isinstance(raw.get("input"), str) and raw["input"].strip():
        prompt = f"{prompt}\n\n{raw['input']}"
    msgs = []
    if isinstance(raw.get("system"), str) and raw["system"].strip():
        msgs.append(message("system", raw["system"]))
    msgs.append(message("user", prompt))
    msgs.append(message("assistant", raw["output"], raw.get("reasoning_content"), "output: "))
    if not prompt.strip():
        raise RecordError("empty instruction")
    return {"messages": check_turns(msgs), **collect_images(msgs, raw), "meta": _meta(raw, "alpaca")}


def from_sharegpt(raw: dict[str, Any]) -> dict[str, Any]:
    conv = raw.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise RecordError("field 'conversations' must be a non-empty list")
    msgs = []
    if isinstance(raw.get("system"), str) and raw["system"].strip():
        msgs.append(message("system", raw["system"]))
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RecordError(f"conversations[{i}] needs 'from' and 'value'")
        role = SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            raise RecordError(f"conversations[{i}]: unknown speaker {turn['from']!r}")
        where = f"conversations[{i}]: "
        if turn["from"] == "function_call":  # LLaMA-Factory: the assistant's call(s) as a JSON string
            msgs.append(message(role, "", turn.get("reasoning_content"), where, tool_calls=turn["value"] or None))
        else:
            msgs.append(message(role, turn["value"], turn.get("reasoning_content"), where))
    images = collect_images(msgs, raw)
    return {"messages": check_turns(msgs), **images, **record_extras(raw), "meta": _meta(raw, "sharegpt")}


def _single_turn(raw: dict[str, Any], prompt_key: str, response_key: str, fmt: str) -> dict[str, Any]:
    """Seed-style records: one prompt field, one response field, optional `system` and `reasoning_content`."""
    for key in (prompt_key, response_key):
        if key not in raw:
            raise RecordError(f"missing field '{key}'")
        if not isinstance(raw[key], str):
            raise RecordError(f"field '{key}' must be a string, got {type(raw[key]).__name__}")
    if not raw[prompt_key].strip():
        raise RecordError(f"empty {prompt_key}")
    msgs = []
    if isinstance(raw.get("system"), str) and raw["system"].strip():
        msgs.append(message("system", raw["system"]))
    msgs.append(message("user", raw[prompt_key]))
    msgs.append(message("assistant", raw[response_key], raw.get("reasoning_content"), f"{response_key}: "))
    meta = _meta(raw, fmt, {prompt_key, response_key, "system", "reasoning_content"})
    return {"messages": check_turns(msgs), "meta": meta}


def from_text_context(raw: dict[str, Any]) -> dict[str, Any]:
    """`{"context": prompt, "text": response}`: the context is what the user says, the text what the model answers."""
    return _single_turn(raw, "context", "text", "text_context")


def from_query_response(raw: dict[str, Any]) -> dict[str, Any]:
    return _single_turn(raw, "query", "response", "query_response")


GSM8K_FINAL = "\n#### "


def from_question_answer(raw: dict[str, Any]) -> dict[str, Any]:
    """`{"question", "answer"}`; a GSM8K-style answer (steps, then a line "#### 42") becomes reasoning + answer."""
    answer = raw.get("answer")
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        answer = str(answer)
        raw = {**raw, "answer": answer}
    if isinstance(answer, str) and GSM8K_FINAL in answer and raw.get("reasoning_content") is None:
        steps, final = answer.rsplit(GSM8K_FINAL, 1)
        raw = {**raw, "answer": final.strip(), "reasoning_content": steps.strip()}
    rec = _single_turn(raw, "question", "answer", "question_answer")
    rec["meta"]["answer"] = raw["answer"]  # the reference answer for evaluation
    return rec


FORMATS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "messages": from_messages,
    "alpaca": from_alpaca,
    "sharegpt": from_sharegpt,
    "question_answer": from_question_answer,
    "query_response": from_query_response,
    "text_context": from_text_context,
}

# Auto-detection: the first format whose key fields are all present wins (order matters).
DETECT: list[tuple[str, tuple[str, ...]]] = [
    ("messages", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction",)),
    ("question_answer", ("question", "answer")),
    ("query_response", ("query", "response")),
    ("text_context", ("text", "context")),
]


def detect_format(raw: dict[str, Any]) -> str:
    for name, keys in DETECT:
        if all(k in raw for k in keys):
            return name
    raise RecordError(
        "unknown record format: expected 'messages', 'conversations', 'instruction'/'output', 'question'/'answer', "
        "'query'/'response' or 'text'/'context' fields (or give a column mapping)"
    )


def to_sft_record(raw: Any, fmt: str = "auto") -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RecordError(f"record must be a JSON object, got {type(raw).__name__}")
    return FORMATS[detect_format(raw) if fmt == "auto" else fmt](raw)


KNOWN_FIELDS = frozenset(
    {"messages", "conversations", "instruction", "input", "output", "system", "reasoning_content", "tools", "images"}
)


def _meta(raw: dict[str, Any], fmt: str, known: set[str] | frozenset[str] = KNOWN_FIELDS) -> dict[str, Any]:
    meta = {k: v for k, v in raw.items() if k not in known}
    meta["format"] = fmt
    return meta
