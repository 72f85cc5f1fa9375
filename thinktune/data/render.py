"""Render canonical conversations with the model's own chat template, tokenize, and mask the loss.

Labels are the token ids on assistant turns (their thinking, answer and end-of-turn token) and -100 everywhere else,
multi-turn included. We find each message inside the rendered text in order, so no template needs special-casing:
templates that drop old reasoning (Qwen3) or add headers still mask correctly.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import jinja2
from transformers import PreTrainedTokenizerBase

from thinktune.data.formats import RecordError

IGNORE = -100


def inline_reasoning(message: dict[str, Any]) -> str:
    """R1 style: reasoning goes before the answer inside <think> tags, in the assistant's content."""
    if message.get("reasoning"):
        return f"<think>\n{message['reasoning']}\n</think>\n\n{message['content']}"
    return message["content"]


def template_messages(messages: list[dict[str, Any]], system_prompt: str | None = None) -> list[dict[str, str]]:
    out = [{"role": m["role"], "content": inline_reasoning(m)} for m in messages]
    if system_prompt and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], system_prompt: str | None) -> str:
    """Text the model sees before it answers (generation prompt included)."""
    return tokenizer.apply_chat_template(
        template_messages(messages, system_prompt), tokenize=False, add_generation_prompt=True
    )


@dataclass
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def assistant_spans(
    text: str, messages: list[dict[str, str]], end_of_turn: str | None, anchors: dict[int, int] | None = None
) -> list[tuple[int, int]]:
    """Character spans of assistant turns in the rendered `text`, each extended over the end-of-turn marker.

    `anchors` maps a message index to the known start of its content (see `_assistant_anchors`)."""
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        a = (anchors or {}).get(i)
        if a is not None and a >= cursor:
            found: tuple[int, int] | None = (a, a + len(m["content"]))
        else:
            found = _find_content(text, m["content"], cursor)
        if found is None:
            if m["role"] == "assistant":
                raise RecordError(f"messages[{i}]: assistant text not found in the chat template's output")
            continue
        start, end = found
        cursor = end
        if m["role"] != "assistant":
            continue
        if end_of_turn:
            rest = text[end:]
            stripped = rest.lstrip(" ")
            if stripped.startswith(end_of_turn):
                end += len(rest) - len(stripped) + len(end_of_turn)
        spans.append((start, end))
        cursor = end
    return spans


def _assistant_anchors(tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, str]], text: str) -> dict[int, int]:
    """Start of each assistant turn's content where the template renders it right after the generation prompt.

    Searching from the previous message alone would find a short answer such as "a" inside the role header."""
    anchors = {}
    for i, m in enumerate(msgs):
        if m["role"] != "assistant" or i == 0 or not m["content"]:
            continue
        try:
            prefix = tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True)
        except Exception:  # a template may refuse a partial conversation; the anchor is only a hint
            continue
        if isinstance(prefix, str) and text.startswith(prefix) and text.startswith(m["content"], len(prefix)):
            anchors[i] = len(prefix)
    return anchors


def _find_content(text: str, content: str, cursor: int) -> tuple[int, int] | None:
    pos = text.find(content, cursor)
    if pos >= 0 and content:
        return pos, pos + len(content)
    # Templates may re-format <think> blocks (whitespace) or drop history reasoning; fall back to the answer part.
    if "</think>" in content:
        answer = content.split("</think>", 1)[1].strip()
        think = content.split("</think>", 1)[0].replace("<think>", "").strip()
        a = text.find(answer, cursor) if answer else -1
        if a >= 0:
            t = text.find(think, cursor, a) if think else -1
            start = text.rfind("<think>", cursor, t) if t >= 0 else -1
            return (start if start >= 0 else (t if t >= 0 else a)), a + len(answer)
    stripped = content.strip()
    if stripped and stripped != content:
        pos = text.find(stripped, cursor)
        if pos >= 0:
            return pos, pos + len(stripped)
    return None


@dataclass
class Rendered:
    """A conversation as the chat template writes it, with the character spans the loss is computed on."""

    text: str
    spans: list[tuple[int, int]]


def render_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], system_prompt: str | None = None
) -> Rendered:
    msgs = template_messages(messages, system_prompt)
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
    except jinja2.TemplateError as e:  # templates may refuse e.g. non-alternating roles via raise_exception()
        raise RecordError(f"the chat template refused this conversation: {e}") from None
    return Rendered(text, assistant_spans(text, msgs, tokenizer.eos_token, _assistant_anchors(tokenizer, msgs, text)))


def encode_with_offsets(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[tuple[list[int], list]]:
    """(ids, character offsets) per text, no special tokens added (the template already wrote them).

    Calls the Rust tokenizer directly when there is one: the Python wrapper costs more than the encoding itself."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False)]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return list(zip(enc["input_ids"], enc["offset_mapping"], strict=True))


def mask_labels(ids: list[int], offsets: list, spans: list[tuple[int, int]]) -> list[int]:
    """Token k is trained iff its characters lie inside an assistant span (offsets never decrease)."""
    labels = [IGNORE] * len(ids)
    starts = [s for s, _ in offsets]
    for a, b in spans:
        k = bisect.bisect_left(starts, a)
        while k < len(ids) and offsets[k][0] < b:
            s, e = offsets[k]
            if e <= b and e > s:
                labels[k] = ids[k]
            k += 1
    return labels


def to_sample(ids: list[int], offsets: list, spans: list[tuple[int, int]], max_length: int | None) -> TokenizedSample:
    sample = TokenizedSample(list(ids), mask_labels(ids, offsets, spans))
    if sample.trained_tokens == 0:
        raise RecordError("no assistant tokens left to train on")
    if max_length is not None and len(ids) > max_length:
        raise RecordError(f"too long: {len(ids)} tokens > data.max_length={max_length}")
    return sample


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    system_prompt: str | None = None,
    max_length: int | None = None,
) -> TokenizedSample:
    rendered = render_conversation(tokenizer, messages, system_prompt)
    [(ids, offsets)] = encode_with_offsets(tokenizer, [rendered.text])
    return to_sample(ids, offsets, rendered.spans, max_length)


def tokenize_conversations(
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, Any]]],
    system_prompt: str | None = None,
    max_length: int | None = None,
) -> list[TokenizedSample | RecordError]:
    """Many conversations at once (one batched tokenizer call); a failing one gives its RecordError in its place."""
    out: list[TokenizedSample | RecordError] = []
    rendered: list[tuple[int, Rendered]] = []
    for i, msgs in enumerate(conversations):
        try:
            rendered.append((i, render_conversation(tokenizer, msgs, system_prompt)))
            out.append(RecordError("not tokenized"))
        except RecordError as e:
            out.append(e)
    encoded = encode_with_offsets(tokenizer, [r.text for _, r in rendered])
    for (i, r), (ids, offsets) in zip(rendered, encoded, strict=True):
        try:
            out[i] = to_sample(ids, offsets, r.spans, max_length)
        except RecordError as e:
            out[i] = e
    return out
