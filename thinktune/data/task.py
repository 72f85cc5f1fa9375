"""Prompt + answer sets (RL rewards, evaluation): adapters to the canonical task record

    {"prompt": [messages ending with a user turn], "answer": str, "meta": {...}}

Shapes: `{"prompt", "answer"}` (prompt as a string or turns), `{"question", "answer"}` (a GSM8K answer keeps only
what follows "#### "), and any SFT format whose record carries an `answer` field (the prompt is everything before
the last assistant turn). Answers pulled out of `\\boxed{}` need the evaluator's extractor: see eval/tasks.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from thinktune.data.formats import FORMATS, GSM8K_FINAL, RecordError, message, to_sft_record


def _answer(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise RecordError("field 'answer' must be a string or a number" if value is not None else "no 'answer' field")
    if GSM8K_FINAL in value:
        value = value.rsplit(GSM8K_FINAL, 1)[1]
    if not value.strip():
        raise RecordError("empty answer")
    return value.strip()


def _prompt(value: Any, field: str, system: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        if not value.strip():
            raise RecordError(f"empty {field}")
        msgs = [message("user", value)]
    elif isinstance(value, list) and value:
        msgs = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or "content" not in m:
                raise RecordError(f"{field}[{i}] must be an object with 'role' and 'content'")
            msgs.append(message(m.get("role"), m["content"], m.get("reasoning_content"), f"{field}[{i}]: "))
    else:
        raise RecordError(f"field '{field}' must be a string or a non-empty list of turns")
    if isinstance(system, str) and system.strip() and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, message("system", system))
    if msgs[-1]["role"] != "user":
        raise RecordError(f"{field} must end with a user turn")
    return msgs


def _meta(raw: dict[str, Any], used: set[str], fmt: str) -> dict[str, Any]:
    return {**{k: v for k, v in raw.items() if k not in used}, "format": fmt}


def from_prompt_answer(raw: dict[str, Any]) -> dict[str, Any]:
    if "prompt" not in raw:
        raise RecordError("missing field 'prompt'")
    prompt = _prompt(raw["prompt"], "prompt", raw.get("system"))
    return {
        "prompt": prompt,
        "answer": _answer(raw.get("answer")),
        "meta": _meta(raw, {"prompt", "answer", "system"}, "prompt_answer"),
    }


def from_question_answer_task(raw: dict[str, Any]) -> dict[str, Any]:
    if "question" not in raw:
        raise RecordError("missing field 'question'")
    prompt = _prompt(raw["question"], "question", raw.get("system"))
    used = {"question", "answer", "system"}
    return {"prompt": prompt, "answer": _answer(raw.get("answer")), "meta": _meta(raw, used, "question_answer")}


def from_conversation(raw: dict[str, Any], fmt: str = "auto") -> dict[str, Any]:
    sft = to_sft_record(raw, fmt)
    msgs = sft["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    if "answer" not in sft["meta"]:
        raise RecordError("no reference answer: add an 'answer' field")
    meta = {k: v for k, v in sft["meta"].items() if k != "answer"}
    return {"prompt": msgs[:last], "answer": _answer(sft["meta"]["answer"]), "meta": meta}


TASK_FORMATS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "prompt_answer": from_prompt_answer,
    "question_answer": from_question_answer_task,
    "conversation": from_conversation,
}


def detect_task_format(raw: dict[str, Any]) -> str:
    if "prompt" in raw:
        return "prompt_answer"
    if "question" in raw:
        return "question_answer"
    return "conversation"


def to_task_record(raw: Any, fmt: str = "auto") -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RecordError(f"record must be a JSON object, got {type(raw).__name__}")
    if fmt in FORMATS and fmt not in TASK_FORMATS:  # an SFT format named explicitly: read it as a conversation
        return from_conversation(raw, fmt)
    return TASK_FORMATS[detect_task_format(raw) if fmt == "auto" else fmt](raw)
