"""Tool calls: their canonical shape, and how to read them back from what a model wrote.

Canonical (what records, the server and evaluation speak):
    tools      [{"type": "function", "function": {"name", "description", "parameters"}}]   (OpenAI's shape)
    a call     {"name": str, "arguments": dict}

Models write calls in their chat template's syntax; `extract_tool_calls` reads the two in use by the models we tune:
    Qwen2.5/Qwen3 (Hermes style)  <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>
    DeepSeek-R1 / V3              <｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```
                                  <｜tool▁call▁end｜>
`tool_call_text` writes calls in one of these syntaxes, for chat templates that cannot render `tool_calls` themselves
(DeepSeek-R1-Distill's template needs `content: None`, which transformers 5 drops before rendering).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from thinktune.data.record_error import RecordError

HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
DEEPSEEK = re.compile(
    r"<｜tool▁call▁begin｜>\s*(?:\w+)?<｜tool▁sep｜>\s*([^\n]+?)\s*\n```(?:json)?\s*(.*?)\s*```\s*<｜tool▁call▁end｜>",
    re.DOTALL,
)
DEEPSEEK_MARKERS = re.compile(r"<｜tool▁(?:calls|outputs?)▁(?:begin|end)｜>")
OPENERS = ("<tool_call>", "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>")


def _json(value: Any, where: str, what: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise RecordError(f"{where}{what} is not JSON ({e.msg})") from None


def parse_call(value: Any, where: str = "") -> dict[str, Any]:
    """One call from a record: `{"name", "arguments"}` or OpenAI's `{"type": "function", "function": {...}}`, either
    as an object or as a JSON string; the arguments may be a JSON string too. Raises RecordError."""
    call = _json(value, where, "tool call")
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        call = call["function"]
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"].strip():
        raise RecordError(f"{where}a tool call needs a 'name'")
    args = _json(call.get("arguments", {}), where, f"arguments of tool call {call['name']!r}")
    if not isinstance(args, dict):
        raise RecordError(f"{where}arguments of tool call {call['name']!r} must be a JSON object")
    return {"name": call["name"], "arguments": args}


def parse_calls(value: Any, where: str = "") -> list[dict[str, Any]]:
    """A list of calls, or one call (object or JSON string, e.g. a LLaMA-Factory `function_call` turn)."""
    value = _json(value, where, "tool call")
    items = value if isinstance(value, list) else [value]
    if not items:
        raise RecordError(f"{where}empty list of tool calls")
    return [parse_call(c, f"{where}tool_calls[{i}]: " if len(items) > 1 else where) for i, c in enumerate(items)]


def parse_tools(value: Any, where: str = "tools: ") -> list[dict[str, Any]]:
    """Tool definitions (a list, or a JSON string of one) in OpenAI's shape; bare `{"name", ...}` functions are
    wrapped as LLaMA-Factory's glaive data writes them."""
    tools = _json(value, where, "the tool list")
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise RecordError(f"{where}must be a list of tool definitions")
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and "function" in tool else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RecordError(f"{where}[{i}] needs a function 'name'")
        out.append({"type": "function", "function": fn})
    return out


def template_call(call: dict[str, Any]) -> dict[str, Any]:
    """A canonical call as chat templates read it. Arguments go as a JSON string: Qwen3's template prints a string
    as is, DeepSeek's concatenates it and fails on a mapping."""
    args = json.dumps(call["arguments"], ensure_ascii=False)
    return {"type": "function", "function": {"name": call["name"], "arguments": args}}


def hermes_text(calls: list[dict[str, Any]]) -> str:
    return "\n".join(
        "<tool_call>\n"
        + json.dumps({"name": c["name"], "arguments": c["arguments"]}, ensure_ascii=False)
        + "\n</tool_call>"
        for c in calls
    )


DEEPSEEK_CALL_TOKEN = "<｜tool▁call▁begin｜>"


def deepseek_text(calls: list[dict[str, Any]]) -> str:
    """DeepSeek-R1 / V3 syntax, as DeepSeek's own chat template writes calls."""
    body = "\n".join(
        f"{DEEPSEEK_CALL_TOKEN}function<｜tool▁sep｜>{c['name']}\n```json\n"
        f"{json.dumps(c['arguments'], ensure_ascii=False)}\n```<｜tool▁call▁end｜>"
        for c in calls
    )
    return f"<｜tool▁calls▁begin｜>{body}<｜tool▁calls▁end｜>"


def tool_call_text(calls: list[dict[str, Any]], syntax: str) -> str:
    return deepseek_text(calls) if syntax == "deepseek" else hermes_text(calls)


@dataclass
class ParsedOutput:
    """A model's answer with its tool calls taken out; `errors` lists calls that were written but do not parse."""

    content: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def extract_tool_calls(text: str) -> ParsedOutput:
    """Split tool calls (Hermes or DeepSeek syntax) out of generated text; what remains is the content."""
    calls, errors, spans = [], [], []
    for m in HERMES.finditer(text):
        spans.append(m.span())
        try:
            calls.append(parse_call(m.group(1)))
        except RecordError as e:
            errors.append(str(e))
    for m in DEEPSEEK.finditer(text):
        spans.append(m.span())
        try:
            calls.append(parse_call({"name": m.group(1).strip(), "arguments": m.group(2)}))
        except RecordError as e:
            errors.append(str(e))
    content = text
    for a, b in sorted(spans, reverse=True):
        content = content[:a] + content[b:]
    if spans:
        content = DEEPSEEK_MARKERS.sub("", content)
    return ParsedOutput(content.strip(), calls, errors)


def opens_tool_call(text: str) -> int:
    """Index where a tool call starts in streamed text (-1 if none yet); what comes before it is plain content."""
    found = [i for i in (text.find(o) for o in OPENERS) if i >= 0]
    return min(found) if found else -1


def calls_equal(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Same calls in the same order: names equal and arguments equal as JSON values."""
    return len(a) == len(b) and all(
        x["name"] == y["name"] and x["arguments"] == y["arguments"] for x, y in zip(a, b, strict=True)
    )
