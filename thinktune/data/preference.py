"""Preference pairs (DPO & co.): each input shape is an adapter to the canonical preference record

    {"prompt": [messages ending with a user turn], "chosen": assistant message, "rejected": assistant message,
     "meta": {...}}

Shapes: TRL's prompt/chosen/rejected (strings or conversations), LLaMA-Factory's sharegpt ranking records
(`conversations` + `chosen`/`rejected` turns) and alpaca ranking records (`instruction` + `chosen`/`rejected`), and
TRL's implicit-prompt pairs (two whole conversations that share everything but the last answer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from thinktune.data.formats import SHAREGPT_ROLES, RecordError, message

PREFERENCE_KEYS = {"prompt", "chosen", "rejected", "conversations", "instruction", "input", "system"}


def _turn(value: Any, where: str) -> dict[str, Any]:
    """One turn given as {role, content[, reasoning_content]} or sharegpt {from, value}."""
    if not isinstance(value, dict):
        raise RecordError(f"{where} must be an object")
    if "from" in value:
        role = SHAREGPT_ROLES.get(value["from"])
        if role is None:
            raise RecordError(f"{where}: unknown speaker {value['from']!r}")
        if "value" not in value:
            raise RecordError(f"{where}: missing field 'value'")
        return message(role, value["value"], value.get("reasoning_content"), f"{where}: ")
    if "content" not in value:
        raise RecordError(f"{where}: missing field 'content'")
    return message(value.get("role"), value["content"], value.get("reasoning_content"), f"{where}: ")


def _messages(value: Any, field: str, system: Any = None) -> list[dict[str, Any]]:
    if isinstance(value, str):
        if not value.strip():
            raise RecordError(f"empty {field}")
        msgs = [message("user", value)]
    elif isinstance(value, list) and value:
        msgs = [_turn(t, f"{field}[{i}]") for i, t in enumerate(value)]
    else:
        raise RecordError(f"field '{field}' must be a string or a non-empty list of turns")
    if isinstance(system, str) and system.strip() and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, message("system", system))
    if msgs[-1]["role"] != "user":
        raise RecordError(f"{field} must end with a user turn")
    return msgs


def _reply(value: Any, field: str) -> dict[str, Any]:
    """An answer given as a string, one turn, or a list holding one assistant turn (TRL conversational)."""
    if isinstance(value, str):
        return message("assistant", value, None, f"{field}: ")
    if isinstance(value, list):
        if len(value) != 1:
            raise RecordError(f"field '{field}' must hold exactly one assistant turn, got {len(value)}")
        value = value[0]
    if value is None:
        raise RecordError(f"missing field '{field}'")
    turn = _turn(value, field)
    if turn["role"] != "assistant":
        raise RecordError(f"{field} must be an assistant turn, got {turn['role']}")
    return turn


def _answers(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return _reply(raw.get("chosen"), "chosen"), _reply(raw.get("rejected"), "rejected")


def _record(prompt: list[dict[str, Any]], chosen: dict, rejected: dict, raw: dict, fmt: str) -> dict[str, Any]:
    if (chosen["content"], chosen["reasoning"]) == (rejected["content"], rejected["reasoning"]):
        raise RecordError("chosen and rejected are identical")
    meta = {k: v for k, v in raw.items() if k not in PREFERENCE_KEYS}
    meta["format"] = fmt
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "meta": meta}


def from_prompt_chosen_rejected(raw: dict[str, Any]) -> dict[str, Any]:
    if "prompt" not in raw:
        raise RecordError("missing field 'prompt'")
    prompt = _messages(raw["prompt"], "prompt", raw.get("system"))
    return _record(prompt, *_answers(raw), raw, "prompt_chosen_rejected")


def from_sharegpt_preference(raw: dict[str, Any]) -> dict[str, Any]:
    prompt = _messages(raw.get("conversations"), "conversations", raw.get("system"))
    return _record(prompt, *_answers(raw), raw, "sharegpt")


def from_alpaca_preference(raw: dict[str, Any]) -> dict[str, Any]:
    instruction = raw.get("instruction")
    if not isinstance(instruction, str):
        raise RecordError("field 'instruction' must be a string")
    if isinstance(raw.get("input"), str) and raw["input"].strip():
        instruction = f"{instruction}\n\n{raw['input']}"
    prompt = _messages(instruction, "instruction", raw.get("system"))
    return _record(prompt, *_answers(raw), raw, "alpaca")


def from_implicit_preference(raw: dict[str, Any]) -> dict[str, Any]:
    """Two whole conversations; the prompt is what they share, the answers are their different last turns."""
    convs = []
    for field in ("chosen", "rejected"):
        value = raw.get(field)
        if not isinstance(value, list) or len(value) < 2:
            raise RecordError(f"field '{field}' must be a conversation (a list of at least two turns)")
        convs.append([_turn(t, f"{field}[{i}]") for i, t in enumerate(value)])
    chosen, rejected = convs
    if chosen[:-1] != rejected[:-1]:
        raise RecordError("chosen and rejected conversations differ before their last turn")
    prompt = chosen[:-1]
    if prompt[-1]["role"] != "user":
        raise RecordError("the shared prompt must end with a user turn")
    for field, conv in (("chosen", chosen), ("rejected", rejected)):
        if conv[-1]["role"] != "assistant":
            raise RecordError(f"{field} must end with an assistant turn")
    return _record(prompt, chosen[-1], rejected[-1], raw, "implicit")


PREFERENCE_FORMATS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "prompt_chosen_rejected": from_prompt_chosen_rejected,
    "sharegpt": from_sharegpt_preference,
    "alpaca": from_alpaca_preference,
    "implicit": from_implicit_preference,
}


def detect_preference_format(raw: dict[str, Any]) -> str:
    if "chosen" not in raw or "rejected" not in raw:
        raise RecordError("not a preference pair: expected fields 'chosen' and 'rejected'")
    if "conversations" in raw:
        return "sharegpt"
    if "instruction" in raw:
        return "alpaca"
    if "prompt" in raw:
        return "prompt_chosen_rejected"
    return "implicit"


def to_preference_record(raw: Any, fmt: str = "auto") -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RecordError(f"record must be a JSON object, got {type(raw).__name__}")
    return PREFERENCE_FORMATS[detect_preference_format(raw) if fmt == "auto" else fmt](raw)
