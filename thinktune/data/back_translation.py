"""Back-translations, made once per prompt and translator and kept in the data cache.

    <data cache>/translations/<key>.jsonl     one line per prompt: {"prompt": ..., "translation": ... | null}

The key hashes what a translation depends on: the translator (model or endpoint URL, endpoint model), the pivot and
source languages, the instruction, temperature and generation budget. A prompt is looked up by its exact text, so
the file serves every dataset and run that uses the same translator. A failed round trip is kept as null (the
record keeps its prompt) and is not asked again. Lines are appended after each batch; a run killed mid-write
leaves at most one broken last line, which is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from thinktune.data.augment import TRANSLATE_INSTRUCTION, GenerateFn, translate_prompts
from thinktune.data.cache import cache_key, data_cache_dir
from thinktune.data.spec import BackTranslationConfig


def translations_path(cfg: BackTranslationConfig, cache_dir: str | None = None) -> Path:
    parts = {
        "teacher": cfg.teacher,
        "endpoint_model": cfg.endpoint_model,
        "pivot": cfg.pivot_language,
        "source": cfg.source_language,
        "instruction": TRANSLATE_INSTRUCTION,
        "temperature": cfg.temperature,
        "max_new_tokens": cfg.max_new_tokens,
    }
    return data_cache_dir(cache_dir) / "translations" / f"{cache_key(parts)}.jsonl"


class TranslationCache:
    """prompt → back-translated prompt (None: the round trip failed), read from and appended to one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.table: dict[str, str | None] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # the last line of a killed write
                    continue
                self.table[row["prompt"]] = row["translation"]

    def missing(self, prompts: Iterable[str]) -> list[str]:
        return sorted({p for p in prompts if p not in self.table})

    def fill(self, prompts: list[str], generate_fn: GenerateFn, cfg: BackTranslationConfig, batch: int = 16) -> int:
        """Translate the prompts not yet in the file, `batch` at a time, appending each batch; returns how many
        came back as usable paraphrases."""
        todo, made = self.missing(prompts), 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            got = translate_prompts(chunk, generate_fn, cfg.pivot_language, cfg.source_language, batch)
            with open(self.path, "a", encoding="utf-8") as f:
                for prompt in chunk:
                    f.write(json.dumps({"prompt": prompt, "translation": got[prompt]}, ensure_ascii=False) + "\n")
            self.table.update(got)
            made += sum(v is not None for v in got.values())
        return made
