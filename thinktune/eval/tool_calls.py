"""Tool-call accuracy: the calls a model wrote, against a task's reference calls.

A task's reference is a tool call when its SFT record's last assistant message has `tool_calls` (eval/tasks.py). The
model's output is read as the server reads it: thinking split off first, then the calls taken from the answer part
with the data layer's parser (Qwen3's `<tool_call>{json}</tool_call>`, DeepSeek's tool-call tokens). A sample is
correct when its calls equal the reference's in order, names and arguments (as JSON values: key order and spacing do
not count, `1` and `"1"` do).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from thinktune.data.tool_calls import calls_equal, extract_tool_calls
from thinktune.eval.reasoning import split_thinking

Call = dict[str, Any]


@dataclass
class ToolCallScore:
    predicted: list[Call]
    correct: bool
    well_formed: bool  # at least one call, every written call parses, and a think block that opened was closed
    errors: list[str] = field(default_factory=list)


def score_tool_calls(output: str, reference: list[Call]) -> ToolCallScore:
    thinking, answer_text, closed = split_thinking(output)
    parsed = extract_tool_calls(answer_text)
    well_formed = bool(parsed.calls) and not parsed.errors and (thinking is None or closed)
    return ToolCallScore(parsed.calls, calls_equal(parsed.calls, reference), well_formed, parsed.errors)


def calls_key(calls: list[Call]) -> str:
    """One string per distinct list of calls (for voting)."""
    return json.dumps(calls, sort_keys=True, ensure_ascii=False)


def majority_calls_correct(predictions: list[list[Call]], reference: list[Call]) -> bool:
    """maj@k for tool calls: the most common non-empty list of calls (ties: seen first) equals the reference."""
    votes = Counter(calls_key(p) for p in predictions if p)
    if not votes:
        return False
    top = max(votes, key=votes.__getitem__)  # max keeps the first of equals: ties go to the list seen first
    return calls_equal(json.loads(top), reference)


def tool_call_summary(samples: list[dict[str, Any]]) -> dict[str, float | int]:
    """`tool_call_accuracy` over the samples whose task has reference calls, and their count; {} when none has."""
    scored = [s["tool_call_correct"] for s in samples if "tool_call_correct" in s]
    if not scored:
        return {}
    return {"tool_call_accuracy": sum(scored) / len(scored), "tool_call_tasks": len(scored)}
