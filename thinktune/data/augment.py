"""Augmentation (off by default): instruction-template variation and model-written paraphrases.

The training data stage (`data.augment`, prepare.epoch_samples) uses the AUGMENTERS registry: each augmenter
rewrites the first user prompt of a record, and whether it acts on a record in epoch e is a seeded draw from
(data.seed, e, augmenter, record key) — the same record gets the same variant in every process, on resume, and in
`thinktune data inspect --epoch e`. Augmenters run in the configured order, each on the prompt the previous left:

    templates          the prompt wrapped in an instruction template (`templates:<i>`)
    back_translation   the original prompt swapped for its round trip through a pivot language
                       (`back_translation:<language>`); translations are made once and cached (back_translation.py)

Answers and reasoning never change. The pure functions below them: `vary_templates` (records, fraction, seed);
`paraphrase` rewrites prompts with any `generate_fn(list of prompts) -> list of texts`; `model_generate_fn` makes one
from a thinktune-loaded model, and `back_translate` chains two calls through another language.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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
TRANSLATE_INSTRUCTION = (
    "Translate the following text into {language}. Keep every number as written. Reply with the translation only."
    "\n\n{text}"
)
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")

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
    chosen = [i for i, rec in enumerate(records) if rng.random() < fraction and first_prompt(rec) is not None]
    out = list(records)
    for start in range(0, len(chosen), batch_size):
        batch = chosen[start : start + batch_size]
        prompts = [instruction.format(text=first_prompt(records[i])) for i in batch]
        replies = generate_fn(prompts)
        if len(replies) != len(prompts):
            raise ValueError(f"generate_fn returned {len(replies)} texts for {len(prompts)} prompts")
        for i, reply in zip(batch, replies, strict=True):
            text = _clean_output(reply)
            if text and text != first_prompt(records[i]):
                out[i] = _with_prompt(records[i], text, how)
    return out


def rewrite_texts(
    texts: Sequence[str], generate_fn: GenerateFn, instruction: str, batch_size: int = 16
) -> list[str | None]:
    """The generator's rewrite of each text under `instruction` ({text} slot); None where it is empty, unfinished
    or unchanged."""
    out: list[str | None] = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        replies = generate_fn([instruction.format(text=t) for t in batch])
        if len(replies) != len(batch):
            raise ValueError(f"generate_fn returned {len(replies)} texts for {len(batch)} prompts")
        for text, reply in zip(batch, replies, strict=True):
            new = _clean_output(reply)
            out.append(new if new and new != text else None)
    return out


def translate_prompts(
    prompts: Sequence[str],
    generate_fn: GenerateFn,
    via: str = "French",
    source_language: str = "English",
    batch_size: int = 16,
) -> dict[str, str | None]:
    """Each prompt → its round trip through `via` (None when a leg failed, it came back unchanged, or its numbers
    differ from the prompt's)."""
    there = rewrite_texts(prompts, generate_fn, TRANSLATE_INSTRUCTION.replace("{language}", via), batch_size)
    todo = [i for i, t in enumerate(there) if t is not None]
    back_instruction = TRANSLATE_INSTRUCTION.replace("{language}", source_language)
    back_texts = rewrite_texts([there[i] for i in todo], generate_fn, back_instruction, batch_size)
    back = dict(zip(todo, back_texts, strict=True))
    out: dict[str, str | None] = {}
    for i, prompt in enumerate(prompts):
        result = back.get(i)
        out[prompt] = result if result and result != prompt and same_numbers(result, prompt) else None
    return out


def same_numbers(a: str, b: str) -> bool:
    """Whether two texts hold the same numbers: a paraphrase that lost or changed one asks another question, and
    the kept answer would be wrong for it."""
    return sorted(NUMBER.findall(a)) == sorted(NUMBER.findall(b))


def back_translate(
    records: Sequence[dict[str, Any]],
    generate_fn: GenerateFn,
    via: str = "French",
    source_language: str = "English",
    fraction: float = 1.0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Prompts translated into `via` and back: a paraphrase that keeps the meaning and changes the wording."""
    rng = random.Random(seed)
    chosen = [i for i, rec in enumerate(records) if rng.random() < fraction and first_prompt(rec) is not None]
    table = translate_prompts([first_prompt(records[i]) for i in chosen], generate_fn, via, source_language)
    out = list(records)
    for i in chosen:
        new = table[first_prompt(records[i])]
        if new:  # a failed way back would leave the foreign text: the original stays instead
            out[i] = _with_prompt(records[i], new, f"back-translation:{via}")
    return out


def first_prompt(rec: dict[str, Any]) -> str | None:
    """The text of the record's first user turn (None: no user turn, or not plain text)."""
    key = "messages" if "messages" in rec else "prompt"
    i = _first_user(rec[key])
    content = None if i is None else rec[key][i]["content"]
    return content if isinstance(content, str) and content else None


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


# ---- the augmenters of the data stage (data.augment.augmenters) -------------------------------------------------


class Augmenter(Protocol):
    name: str
    fraction: float

    def rewrite(self, text: str, original: str, rng: random.Random) -> tuple[str, str] | None:
        """(new prompt, label) for the prompt `text` (the record's `original` prompt after the augmenters before
        this one), or None when this augmenter has nothing for the record."""


@dataclass(frozen=True)
class TemplateVariation:
    fraction: float
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    name: str = "templates"

    def rewrite(self, text: str, original: str, rng: random.Random) -> tuple[str, str] | None:
        t = rng.randrange(len(self.templates))
        return self.templates[t].format(prompt=text), f"templates:{t}"


@dataclass(frozen=True)
class BackTranslation:
    fraction: float
    via: str
    translations: Mapping[str, str | None] = field(default_factory=dict)  # original prompt → its round trip
    name: str = "back_translation"

    def rewrite(self, text: str, original: str, rng: random.Random) -> tuple[str, str] | None:
        paraphrase = self.translations.get(original)
        if not paraphrase:  # not translated (yet), or the round trip failed
            return None
        # a template applied before keeps its wrapping: only the original prompt inside it is swapped
        return text.replace(original, paraphrase), f"back_translation:{self.via}"


def _templates(cfg: Any, translations: Mapping[str, str | None] | None) -> Augmenter:
    return TemplateVariation(cfg.template_fraction, tuple(cfg.templates or DEFAULT_TEMPLATES))


def _back_translation(cfg: Any, translations: Mapping[str, str | None] | None) -> Augmenter:
    bt = cfg.back_translation
    return BackTranslation(bt.fraction, bt.pivot_language, translations or {})


# name → builder(AugmentConfig, translations) (spec.AugmentConfig validates names against this registry)
AUGMENTERS: dict[str, Callable[[Any, Mapping[str, str | None] | None], Augmenter]] = {
    "templates": _templates,
    "back_translation": _back_translation,
}


def build_augmenters(cfg: Any, translations: Mapping[str, str | None] | None = None) -> list[Augmenter]:
    """The configured augmenters (an AugmentConfig), in order; `translations` feed back_translation."""
    return [AUGMENTERS[name](cfg, translations) for name in cfg.augmenters]


def draws(augmenter: str, key: str, seed: int, epoch: int) -> random.Random:
    # str seeds hash with sha512: the same draw in every process and Python run (no PYTHONHASHSEED effect)
    return random.Random(f"{seed}:{epoch}:{augmenter}:{key}")


def plan(augmenters: Sequence[Augmenter], key: str, seed: int, epoch: int) -> list[tuple[Augmenter, random.Random]]:
    """The augmenters that act on the record `key` in `epoch`, each with its generator for the rewrite."""
    out = []
    for aug in augmenters:
        rng = draws(aug.name, key, seed, epoch)
        if rng.random() < aug.fraction:
            out.append((aug, rng))
    return out


def augment_record(rec: dict[str, Any], planned: list[tuple[Augmenter, random.Random]]) -> dict[str, Any]:
    """The record with its first user prompt rewritten by the planned augmenters (meta.augmented lists them);
    the record itself when none changed it."""
    original = first_prompt(rec)
    if original is None or not planned:
        return rec
    text, labels = original, []
    for aug, rng in planned:
        out = aug.rewrite(text, original, rng)
        if out is not None and out[0] != text:
            text, label = out
            labels.append(label)
    return _with_prompt(rec, text, "+".join(labels)) if labels else rec


def record_key(rec: dict[str, Any], copy: int = 0) -> str:
    """What an augmentation draw is keyed by: the record's file and line (and which copy of an upsampled row)."""
    return f"{rec['meta'].get('source')}:{rec['meta'].get('line')}:{copy}"


def drawn_prompts(
    records: Sequence[dict[str, Any]], augmenter: str, fraction: float, seed: int, epoch: int
) -> set[str]:
    """The prompts that `augmenter` acts on in `epoch` (for back_translation: the ones to translate)."""
    return {
        p
        for rec in records
        if draws(augmenter, record_key(rec), seed, epoch).random() < fraction and (p := first_prompt(rec)) is not None
    }


def augment_epoch(
    records: Sequence[dict[str, Any]], augmenters: Sequence[Augmenter], seed: int, epoch: int
) -> list[dict[str, Any]]:
    """The records as epoch `epoch` trains them (the same draws as the training data stage)."""
    return [augment_record(rec, plan(augmenters, record_key(rec), seed, epoch)) for rec in records]
