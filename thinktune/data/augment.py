"""Augmentation (off by default): instruction-template variation and model-written paraphrases.

`vary_templates` re-wraps the first user prompt of a seeded fraction of records in another instruction template —
a pure function of (records, fraction, seed), so epoch e uses seed + e and gets a fresh draw.
`paraphrase` rewrites prompts with any `generate_fn(list of prompts) -> list of texts`; `model_generate_fn` makes
one from a thinktune-loaded model, and `back_translate` chains two calls through another language.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from thinktune.data.formats import RecordError, split_think

DEFAULT_TEMPLATES = (
    "Question: {prompt}\nAnswer:",
    "{prompt}\n\nThink it through step by step.",
    "Solve the following problem.\n\n{prompt}",
    "Here is a task for you:\n{prompt}",
    "{prompt}\n\nExplain your reasoning, then give the answer.",
    "Please help with this.\n\n{prompt}",
)
PARAPHRASE_INSTRUCTION = (
    "Rewrite the following text so that it means exactly the same but uses different words. "
    "Keep every number, name and formula. Reply with the rewritten text only.\n\n{text}"
)
TRANSLATE_INSTRUCTION = "Translate the following text into {language}. Reply with the translation only.\n\n{text}"

GenerateFn = Callable[[list[str]], list[str]]


def _first_user(messages: list[dict[str, Any]]) -> int | None:
    return next((i for i, m in enumerate(messages) if m["role"] == "user"), None)


def _with_prompt(rec: dict[str, Any], text: str, how: str) -> dict[str, Any]:
    key = "messages" if "messages" in rec else "prompt"
    msgs = [dict(m) for m in rec[key]]
    msgs[_first_user(msgs)]["content"] = text
    return {**rec, key: msgs, "meta": {**rec["meta"], "augmented": how}}


def vary_templates(
    records: Sequence[dict[str, Any]], fraction: float, seed: int, templates: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Copies of the records where a `fraction` (drawn with `seed`) have their first user prompt re-templated."""
    templates = list(templates or DEFAULT_TEMPLATES)
    rng = random.Random(seed)
    out = []
    for rec in records:
        pick, t = rng.random(), rng.randrange(len(templates))
        key = "messages" if "messages" in rec else "prompt"
        i = _first_user(rec[key])
        if pick >= fraction or i is None:
            out.append(rec)
            continue
        out.append(_with_prompt(rec, templates[t].format(prompt=rec[key][i]["content"]), f"template:{t}"))
    return out


def _clean_output(text: str) -> str:
    """A generator's reply without its thinking; empty when the reply is unusable (unfinished <think>)."""
    try:
        _, answer = split_think(text)
    except RecordError:
        return ""
    return answer.strip()


def paraphrase(
    records: Sequence[dict[str, Any]],
    generate_fn: GenerateFn,
    fraction: float = 1.0,
    seed: int = 0,
    instruction: str = PARAPHRASE_INSTRUCTION,
    batch_size: int = 16,
    how: str = "paraphrase",
) -> list[dict[str, Any]]:
    """Records whose first user prompt (for a seeded `fraction`) is replaced by the generator's rewrite.

    An empty or unchanged rewrite keeps the original; rewritten records get meta.augmented = `how`."""
    rng = random.Random(seed)
    chosen = [i for i, rec in enumerate(records) if rng.random() < fraction and _prompt_of(rec) is not None]
    out = list(records)
    for start in range(0, len(chosen), batch_size):
        batch = chosen[start : start + batch_size]
        prompts = [instruction.format(text=_prompt_of(records[i])) for i in batch]
        replies = generate_fn(prompts)
        if len(replies) != len(prompts):
            raise ValueError(f"generate_fn returned {len(replies)} texts for {len(prompts)} prompts")
        for i, reply in zip(batch, replies, strict=True):
            text = _clean_output(reply)
            if text and text != _prompt_of(records[i]):
                out[i] = _with_prompt(records[i], text, how)
    return out


def back_translate(
    records: Sequence[dict[str, Any]],
    generate_fn: GenerateFn,
    via: str = "French",
    source_language: str = "English",
    fraction: float = 1.0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Prompts translated into `via` and back: a paraphrase that keeps the meaning and changes the wording."""
    there = paraphrase(records, generate_fn, fraction, seed, TRANSLATE_INSTRUCTION.replace("{language}", via), how=via)
    back_instruction = TRANSLATE_INSTRUCTION.replace("{language}", source_language)
    translated = [r for r in there if r["meta"].get("augmented") == via]
    back = iter(paraphrase(translated, generate_fn, 1.0, seed, back_instruction, how=f"back-translation:{via}"))
    out = []
    for original, mid in zip(records, there, strict=True):
        if mid["meta"].get("augmented") != via:
            out.append(original)
            continue
        result = next(back)
        # a failed way back leaves the foreign text: keep the original instead
        out.append(result if result["meta"].get("augmented") != via else original)
    return out


def _prompt_of(rec: dict[str, Any]) -> str | None:
    key = "messages" if "messages" in rec else "prompt"
    i = _first_user(rec[key])
    return None if i is None else rec[key][i]["content"]


def model_generate_fn(
    model: Any, tokenizer: Any, max_new_tokens: int = 256, system_prompt: str | None = None
) -> GenerateFn:
    """A generate_fn from a loaded causal LM: chat-templated prompts, greedy decoding, left padding."""
    import torch

    from thinktune.data.render import render_prompt

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def generate(prompts: list[str]) -> list[str]:
        texts = [
            render_prompt(tokenizer, [{"role": "user", "content": p, "reasoning": None}], system_prompt)
            for p in prompts
        ]
        encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(encoded):
            ids[i, width - len(e) :] = torch.tensor(e)
            mask[i, width - len(e) :] = 1
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.to(model.device),
                attention_mask=mask.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
            )
        return [tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]

    return generate
