"""Generated text → the assistant's reply in OpenAI's shape: `reasoning_content`, `content` and `tool_calls`.

One path for both modes: `ReplyStream.feed` / `finish` give the stream's deltas, and `whole_reply` merges the deltas
of the whole text into one message, so a streamed reply always adds up to the non-streamed one.

Thinking is split first (thinking.py); tool calls are read from the content part only, with the data layer's parser
(`thinktune.data.tool_calls`: Qwen3's `<tool_call>{json}</tool_call>`, DeepSeek's tool-call tokens). While streaming,
content goes out as it comes until a tool call opens; from there on it is held, and at the end the calls go out as
complete `tool_calls` deltas (vLLM streams the arguments piece by piece; a client that accumulates deltas cannot tell
the difference). A call that was written but does not parse voids them all: the held text goes out as content, as
vLLM's Hermes parser does, so the client sees what the model wrote.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from thinktune.data.tool_calls import OPENERS, extract_tool_calls, opens_tool_call
from thinktune.serve.thinking import ThinkingSplitter, partial_tag


def openai_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    """A canonical call `{"name", "arguments": dict}` as OpenAI's response writes it (arguments as a JSON string)."""
    args = json.dumps(call["arguments"], ensure_ascii=False)
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": call["name"], "arguments": args},
    }


class ReplyStream:
    """feed(text) → deltas for each generated piece; finish(reason) → the last deltas and the finish_reason.

    `thinking`: False drops the reasoning (thinking turned off). `tools`: parse tool calls out of the content."""

    def __init__(self, starts_in_thinking: bool = False, thinking: bool = True, tools: bool = False):
        self.splitter = ThinkingSplitter(starts_in_thinking)
        self.thinking, self.tools = thinking, tools
        self.sent = ""  # content streamed so far
        self.held = ""  # content from the first tool-call opener on (or a suffix that may still become one)
        self.opened = False

    def feed(self, text: str) -> list[dict[str, Any]]:
        return self._deltas(self.splitter.feed(text))

    def finish(self, reason: str) -> tuple[list[dict[str, Any]], str]:
        deltas = self._deltas(self.splitter.finish())
        if not self.tools or not self.held:
            return deltas, reason
        parsed = extract_tool_calls(self.sent + self.held)
        if parsed.errors or not parsed.calls:
            rest, calls = self.held, []
        else:  # the content before the first opener went out already; it is the start of parsed.content
            rest = parsed.content[len(self.sent) :] if parsed.content.startswith(self.sent) else ""
            calls = parsed.calls
        self.held = ""
        if rest:
            deltas.append({"content": rest})
        for i, call in enumerate(calls):
            deltas.append({"tool_calls": [{"index": i, **openai_tool_call(call)}]})
        return deltas, "tool_calls" if calls else reason

    def _deltas(self, parts) -> list[dict[str, Any]]:
        deltas = []
        if parts.reasoning and self.thinking:
            deltas.append({"reasoning_content": parts.reasoning})
        content = self._release(parts.content) if self.tools else parts.content
        if content:
            deltas.append({"content": content})
        return deltas

    def _release(self, text: str) -> str:
        """The part of the new content that can go out now: everything before a tool call (or a tag fragment)."""
        self.held += text
        if self.opened or not self.held:
            return ""
        start = opens_tool_call(self.held)
        if start >= 0:
            self.opened = True
        else:
            start = len(self.held) - max(partial_tag(self.held, o) for o in OPENERS)
        if start < len(self.held):  # whitespace in front of a call belongs to neither side yet
            start = len(self.held[:start].rstrip())
        out, self.held = self.held[:start], self.held[start:]
        self.sent += out
        return out


def whole_reply(
    text: str, reason: str, starts_in_thinking: bool = False, thinking: bool = True, tools: bool = False
) -> tuple[dict[str, Any], str]:
    """(message, finish_reason) of a whole generated text: the merged deltas of streaming it."""
    stream = ReplyStream(starts_in_thinking, thinking, tools)
    deltas = stream.feed(text)
    last, reason = stream.finish(reason)
    deltas += last
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content", "") for d in deltas)
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    message: dict[str, Any] = {"role": "assistant", "content": content, "reasoning_content": reasoning or None}
    if calls:
        message["content"] = content or None
        message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
    return message, reason
