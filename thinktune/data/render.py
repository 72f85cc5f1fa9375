"""Render canonical records into training samples: what the model sees at inference, then what it must write.

Each trained assistant turn is built as
    prompt      the chat template with add_generation_prompt=True over the history (as the template shows history at
                inference), with the same `enable_thinking` and `tools`: exactly what `render_prompt` gives eval,
                chat and serve
    completion  thinking + answer (+ tool calls) + end of turn: the template's own render of the turn where it keeps
                the reasoning (Qwen3's last turn, ChatML), else `<think>\\n…\\n</think>\\n\\n` + the template's render
                of the answer (DeepSeek-R1-Distill writes only what follows `</think>`)
and the loss is on completions only. Where the generation prompt pre-fills part of the turn (R1's `<think>\\n`,
Qwen3's empty think block when thinking is off), the completion starts after it.

`data.multi_turn`: `every_turn` trains every assistant turn, each after its own history; consecutive turns share one
sequence when the next prompt starts with the previous sample (templates that keep history as written), else they
are separate samples — so a turn whose reasoning the template drops from history is never trained without it.
`last` trains the final turn only. Parity: the tokens in front of each completion must equal the tokens of its
inference prompt alone (a merge across the boundary would train a prompt the model never sees); a sample where
they differ fails with a short diff.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass, field
from typing import Any

import jinja2
from transformers import PreTrainedTokenizerBase

from thinktune.data.record_error import RecordError
from thinktune.data.tool_calls import DEEPSEEK_CALL_TOKEN, template_call, tool_call_text

IGNORE = -100
PROBE = "ZQXJV"  # a string no template writes by itself
THINKING_MODES = ("auto", "on", "off", "per-record")


def think_block(reasoning: str) -> str:
    """R1 style, as Qwen3's template writes it too."""
    return f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n"


def inline_reasoning(message: dict[str, Any]) -> str:
    """The assistant's thinking and answer as one text (what the model writes)."""
    if message.get("reasoning"):
        return think_block(message["reasoning"]) + message["content"]
    return message["content"]


@dataclass(frozen=True)
class RenderOptions:
    """The data settings that decide how a record becomes samples (see `config.DataConfig`)."""

    system_prompt: str | None = None
    thinking: str = "auto"
    multi_turn: str = "every_turn"
    empty_think_in_loss: bool = False
    max_length: int | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> RenderOptions:
        return cls(
            system_prompt=cfg.system_prompt,
            thinking=getattr(cfg, "thinking", "auto"),
            multi_turn=getattr(cfg, "multi_turn", "every_turn"),
            empty_think_in_loss=getattr(cfg, "empty_think_in_loss", False),
            max_length=cfg.max_length,
        )


# ---- what a chat template does, found by rendering probes once per template ----


@dataclass(frozen=True)
class TemplateFacts:
    end_of_turn: str | None  # what the template writes after an assistant message (`<|im_end|>`, R1's eos)
    renders_calls: bool  # the template writes `tool_calls` itself; else they go into the content as text:
    call_syntax: str = "hermes"  # `deepseek` when the vocabulary has DeepSeek's tool-call tokens


def _apply(tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, Any]], **kwargs: Any) -> str:
    try:
        return tokenizer.apply_chat_template(msgs, tokenize=False, **kwargs)
    except (jinja2.TemplateError, TypeError, KeyError, IndexError) as e:  # templates raise on what they refuse
        raise RecordError(f"the chat template refused this conversation: {e}") from None


@functools.lru_cache(maxsize=16)
def _facts(template: str, tokenizer: PreTrainedTokenizerBase) -> TemplateFacts:
    user = {"role": "user", "content": "Q"}
    text = _apply(tokenizer, [user, {"role": "assistant", "content": PROBE}])
    end = text[text.rindex(PROBE) + len(PROBE) :].strip() or None if PROBE in text else None
    call = [template_call({"name": PROBE, "arguments": {}})]
    try:
        text = _apply(tokenizer, [user, {"role": "assistant", "content": "", "tool_calls": call}])
    except RecordError:
        text = ""
    syntax = "deepseek" if DEEPSEEK_CALL_TOKEN in tokenizer.get_vocab() else "hermes"
    return TemplateFacts(end, PROBE in text, syntax)


def template_facts(tokenizer: PreTrainedTokenizerBase) -> TemplateFacts:
    return _facts(tokenizer.chat_template or "", tokenizer)


# ---- canonical messages → the dicts chat templates read ----


def template_message(m: dict[str, Any], facts: TemplateFacts) -> dict[str, Any]:
    """Reasoning goes as `reasoning_content`: the template decides whether history shows it (Qwen3 after the last
    user query) or not (R1 never; ChatML templates that do not know the field)."""
    out: dict[str, Any] = {"role": m["role"], "content": m["content"]}
    if m["role"] == "assistant" and m.get("reasoning"):
        out["reasoning_content"] = m["reasoning"]
    calls = m.get("tool_calls")
    if calls and facts.renders_calls:
        out["tool_calls"] = [template_call(c) for c in calls]
    elif calls:  # the template cannot write them: the calls go into the content in the model's own syntax
        out["content"] = "\n".join(x for x in (m["content"], tool_call_text(calls, facts.call_syntax)) if x)
    return out


def template_messages(
    messages: list[dict[str, Any]], system_prompt: str | None = None, facts: TemplateFacts | None = None
) -> list[dict[str, Any]]:
    facts = facts or TemplateFacts(None, False)
    out = [template_message(m, facts) for m in messages]
    if system_prompt and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


def _kwargs(tools: list[dict[str, Any]] | None, enable_thinking: bool | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if tools:
        kwargs["tools"] = tools
    if enable_thinking is not None:
        kwargs["enable_thinking"] = enable_thinking
    return kwargs


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    system_prompt: str | None = None,
    *,
    tools: list[dict[str, Any]] | None = None,
    enable_thinking: bool | None = None,
    template_kwargs: dict[str, Any] | None = None,
) -> str:
    """Text the model sees before it answers (generation prompt included): the one inference render that eval,
    chat, serve and GRPO share, and that training prompts are checked against."""
    msgs = template_messages(messages, system_prompt, template_facts(tokenizer))
    kwargs = {**(template_kwargs or {}), **_kwargs(tools, enable_thinking)}
    return _apply(tokenizer, msgs, add_generation_prompt=True, **kwargs)


# ---- thinking modes ----


def record_thinking(rec: dict[str, Any], mode: str) -> bool | None:
    """The `enable_thinking` a record is rendered with (None: the template's default, thinking on)."""
    flag = rec.get("meta", {}).get("enable_thinking")
    has_reasoning = any(m.get("reasoning") for m in rec["messages"])
    if mode == "off":
        return False
    if mode == "on":
        return True
    if flag is None:
        return has_reasoning if mode == "auto" else True
    if flag is False and has_reasoning:
        raise RecordError("enable_thinking is false but the record has reasoning")
    return flag


def inference_thinking(mode: str, flag: bool | None = None) -> bool | None:
    """The `enable_thinking` of a generation (eval, chat, GRPO rollouts) under `data.thinking`: `on`/`off` force it,
    otherwise the task's own flag, else the template's default (thinking on)."""
    if mode == "off":
        return False
    if mode == "on":
        return True
    return flag


def _without_reasoning(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**m, "reasoning": None} for m in messages]


# ---- one turn: prompt + completion ----


@dataclass
class Rendered:
    """A training sample as text: the trained character spans, and each span's inference prompt."""

    text: str
    spans: list[tuple[int, int]]
    prompts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def build_turn(
    tokenizer: PreTrainedTokenizerBase,
    history: list[dict[str, Any]],
    turn: dict[str, Any],
    system_prompt: str | None,
    tools: list[dict[str, Any]] | None,
    enable_thinking: bool | None,
    empty_think_in_loss: bool = False,
) -> tuple[str, str, list[str]]:
    """(prompt, completion, notes) of one assistant turn after its history."""
    facts = template_facts(tokenizer)
    kwargs = _kwargs(tools, enable_thinking)
    prompt = render_prompt(tokenizer, history, system_prompt, tools=tools, enable_thinking=enable_thinking)
    full = _apply(tokenizer, template_messages([*history, turn], system_prompt, facts), **kwargs)
    notes = []
    cut = _common_prefix(prompt, full)
    prefill, completion = prompt[cut:], full[cut:]
    if facts.end_of_turn and facts.end_of_turn in completion:
        completion = completion[: completion.rindex(facts.end_of_turn) + len(facts.end_of_turn)]
    written = [turn["content"].strip()] + [c["name"] for c in turn.get("tool_calls") or []]
    if not all(w in completion for w in written if w):
        why = " (the answer contains '</think>', where the template cuts it)" if "</think>" in turn["content"] else ""
        raise RecordError(f"messages[{len(history)}]: assistant text not found in the chat template's output{why}")
    reasoning = (turn.get("reasoning") or "").strip()
    dropped = bool(reasoning) and reasoning not in completion
    if dropped:
        notes.append("the chat template does not write this turn's reasoning: its thinking is added to the completion")
    pos = min((completion.find(w) for w in written if w), default=0)  # where what the assistant says begins
    if dropped or (prefill and not completion.startswith(prefill)):
        completion = completion[:pos] + think_block(reasoning) + completion[pos:]
    if prefill:  # the generation prompt writes the start of the turn (R1 `<think>\n`, Qwen3's empty think block)
        if not completion.startswith(prefill):
            raise RecordError(
                f"the chat template's generation prompt ends with {prefill[-40:]!r}, which its render of the "
                f"assistant turn does not start with ({completion[:40]!r})"
            )
        completion = completion[len(prefill) :]
    if facts.end_of_turn and not completion.rstrip().endswith(facts.end_of_turn):
        completion += facts.end_of_turn  # the template did not close the turn (DeepSeek's template, one tool call)
        notes.append(f"the chat template does not end this turn: {facts.end_of_turn!r} added")
    if empty_think_in_loss and enable_thinking is False:
        thinking_prompt = render_prompt(tokenizer, history, system_prompt, tools=tools, enable_thinking=True)
        if prompt != thinking_prompt and prompt.startswith(thinking_prompt):
            prompt, completion = thinking_prompt, prompt[len(thinking_prompt) :] + completion
    return prompt, completion, notes


def render_record(
    tokenizer: PreTrainedTokenizerBase, rec: dict[str, Any], opts: RenderOptions | None = None
) -> list[Rendered]:
    """A canonical SFT record as its training samples (see the module docstring)."""
    opts = opts or RenderOptions()
    enable_thinking = record_thinking(rec, opts.thinking)
    msgs = _without_reasoning(rec["messages"]) if enable_thinking is False else rec["messages"]
    turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant" and m.get("train", True)]
    if not turns:
        raise RecordError("no assistant turn to train on (every assistant message has loss_weight 0)")
    if opts.multi_turn == "last":
        turns = turns[-1:] if turns[-1] == max(i for i, m in enumerate(msgs) if m["role"] == "assistant") else []
        if not turns:
            raise RecordError("the final assistant turn has loss_weight 0 (data.multi_turn=last trains only it)")
    samples: list[Rendered] = []
    for i in turns:
        prompt, completion, notes = build_turn(
            tokenizer,
            msgs[:i],
            msgs[i],
            opts.system_prompt,
            rec.get("tools"),
            enable_thinking,
            opts.empty_think_in_loss,
        )
        span = (len(prompt), len(prompt) + len(completion))
        last = samples[-1] if samples else None
        if last is not None and prompt.startswith(last.text):
            last.text, last.spans, last.prompts = prompt + completion, [*last.spans, span], [*last.prompts, prompt]
            last.notes += [n for n in notes if n not in last.notes]
        else:
            samples.append(Rendered(prompt + completion, [span], [prompt], notes))
    return samples


# ---- text → token ids + labels, with the parity check ----


@dataclass
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]
    images: list[str] = field(default_factory=list)  # image files, in the order of their tokens (vision models)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def encode_with_offsets(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[tuple[list[int], list]]:
    """(ids, character offsets) per text, no special tokens added (the template already wrote them).

    Calls the Rust tokenizer directly when there is one: the Python wrapper costs more than the encoding itself."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # padding / truncation an earlier `tokenizer(..., padding=True)` switched on stay on the backend: not here
        padding, truncation = backend.padding, backend.truncation
        backend.no_padding()
        backend.no_truncation()
        try:
            return [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False)]
        finally:
            if padding:
                backend.enable_padding(**{k: v for k, v in padding.items() if k != "length" or v is not None})
            if truncation:
                backend.enable_truncation(**truncation)
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return list(zip(enc["input_ids"], enc["offset_mapping"], strict=True))


def mask_labels(ids: list[int], offsets: list, spans: list[tuple[int, int]]) -> list[int]:
    """Token k is trained iff its characters lie inside a trained span (offsets never decrease)."""
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


def parity_error(
    tokenizer: PreTrainedTokenizerBase, ids: list[int], prompt_ids: list[int], turn: int
) -> RecordError | None:
    """The sample's tokens in front of a completion must be the inference prompt's own tokens."""
    if ids[: len(prompt_ids)] == prompt_ids:
        return None
    k = next((j for j, (a, b) in enumerate(zip(ids, prompt_ids, strict=False)) if a != b), len(ids))
    train, infer = _around(tokenizer, ids, k), _around(tokenizer, prompt_ids, k)
    return RecordError(
        f"parity mismatch: turn {turn + 1}'s training tokens differ from its inference prompt at token {k}: "
        f"trained {train!r}, inference {infer!r}"
    )


def _around(tokenizer: PreTrainedTokenizerBase, ids: list[int], k: int) -> str:
    """The text of the tokens around position k, widened until no multi-byte character is cut at either end (a
    byte-level token can hold half of '｜', which decodes as '\ufffd')."""
    start, end = max(k - 3, 0), min(k + 3, len(ids))
    text = tokenizer.decode(ids[start:end])
    while start > 0 and text.startswith("\ufffd") and k - start < 12:
        start -= 1
        text = tokenizer.decode(ids[start:end])
    while end < len(ids) and text.endswith("\ufffd") and end - k < 12:
        end += 1
        text = tokenizer.decode(ids[start:end])
    return text


def to_sample(ids: list[int], offsets: list, spans: list[tuple[int, int]], max_length: int | None) -> TokenizedSample:
    sample = TokenizedSample(list(ids), mask_labels(ids, offsets, spans))
    if sample.trained_tokens == 0:
        raise RecordError("no assistant tokens left to train on")
    if max_length is not None and len(ids) > max_length:
        raise RecordError(f"too long: {len(ids)} tokens > data.max_length={max_length}")
    return sample


def encode_rendered(
    tokenizer: PreTrainedTokenizerBase, rendered: list[Rendered], max_length: int | None
) -> list[TokenizedSample]:
    """Token ids and labels of a record's samples; raises RecordError (too long, nothing trained, parity)."""
    prompts = [p for r in rendered for p in r.prompts]
    encoded = encode_with_offsets(tokenizer, [r.text for r in rendered] + prompts)
    prompt_ids = iter(ids for ids, _ in encoded[len(rendered) :])
    out, turn = [], 0
    for r, (ids, offsets) in zip(rendered, encoded, strict=False):
        for _ in r.prompts:
            err = parity_error(tokenizer, ids, next(prompt_ids), turn)
            if err is not None:
                raise err
            turn += 1
        out.append(to_sample(ids, offsets, r.spans, max_length))
    return out


def tokenize_record(
    tokenizer: PreTrainedTokenizerBase, rec: dict[str, Any], opts: RenderOptions | None = None, vision: Any = None
) -> list[TokenizedSample]:
    """`vision` (models/vision.py): a vision-language model's way of taking images; without it a record with images
    is refused (its <image> placeholders would train as words)."""
    opts = opts or RenderOptions()
    if not rec.get("images"):
        return encode_rendered(tokenizer, render_record(tokenizer, rec, opts), opts.max_length)
    if vision is None:
        raise RecordError(
            f"the record has {len(rec['images'])} image(s) and the model takes text only: images train with a "
            "vision-language model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL)"
        )
    return with_images(tokenizer, rec, opts, vision)


def with_images(tokenizer: PreTrainedTokenizerBase, rec: dict[str, Any], opts: RenderOptions, vision: Any):
    """Samples of a record with images: each <image> placeholder becomes the model's image text before the chat
    template, then its image token is repeated once per merged patch of that image (never trained). A sample holds
    the images whose placeholders its text contains (every earlier turn's, in order)."""
    rendered = render_record(tokenizer, {**rec, "messages": vision.messages(rec["messages"])}, opts)
    counts = vision.tokens(rec["images"])
    out = []
    for sample in encode_rendered(tokenizer, rendered, None):
        ids, labels, k = vision.expand(sample.input_ids, counts, sample.labels)
        if opts.max_length and len(ids) > opts.max_length:
            raise RecordError(f"too long with its images: {len(ids)} tokens > data.max_length={opts.max_length}")
        out.append(TokenizedSample(ids, labels, list(rec["images"][:k])))
    return out


def tokenize_records(
    tokenizer: PreTrainedTokenizerBase,
    records: list[dict[str, Any]],
    opts: RenderOptions | None = None,
    vision: Any = None,
) -> list[list[TokenizedSample] | RecordError]:
    """Samples of many records; a failing record gives its RecordError in its place."""
    out: list[list[TokenizedSample] | RecordError] = []
    for rec in records:
        try:
            out.append(tokenize_record(tokenizer, rec, opts, vision))
        except RecordError as e:
            out.append(e)
    return out


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    system_prompt: str | None = None,
    max_length: int | None = None,
    *,
    tools: list[dict[str, Any]] | None = None,
    opts: RenderOptions | None = None,
    images: list[str] | None = None,
    vision: Any = None,
) -> TokenizedSample:
    """The sample that trains a conversation's final assistant turn (with the earlier turns it shares a sequence
    with): reference losses in evaluation, preference pairs. `images` (with a model's `vision`) as tokenize_record."""
    base = opts or RenderOptions()
    opts = RenderOptions(system_prompt, base.thinking, base.multi_turn, base.empty_think_in_loss, max_length)
    rec = {"messages": messages, "meta": {}, **({"tools": tools} if tools else {})}
    if images:
        rec["images"] = images
    return tokenize_record(tokenizer, rec, opts, vision)[-1]


def tokenize_conversations(
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, Any]]],
    system_prompt: str | None = None,
    max_length: int | None = None,
) -> list[TokenizedSample | RecordError]:
    out: list[TokenizedSample | RecordError] = []
    for msgs in conversations:
        try:
            out.append(tokenize_conversation(tokenizer, msgs, system_prompt, max_length))
        except RecordError as e:
            out.append(e)
    return out
