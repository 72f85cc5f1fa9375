"""The translator of `data.augment`'s back_translation: `distill traces`' teacher (a local model or an
OpenAI-compatible endpoint), asked once per prompt before training, its answers kept in the data cache.

    thinktune train --set data.augment.augmenters=[back_translation] \
        --set data.augment.back_translation.teacher=http://localhost:8000/v1

An endpoint that cannot be reached (or refuses the request) is one line naming the setting and the URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

from thinktune.data.augment import GenerateFn
from thinktune.data.back_translation import TranslationCache, translations_path
from thinktune.data.prepare import TrainingData, prompts_to_translate
from thinktune.data.spec import BackTranslationConfig, DataOptions
from thinktune.errors import UserError
from thinktune.train.distill import DistillConfig, make_teacher


class TeacherUnreachable(UserError):
    """The back-translation teacher (an endpoint) did not answer."""


@contextmanager
def _teacher_errors(cfg: BackTranslationConfig) -> Iterator[None]:
    try:
        import openai
    except ImportError:  # no client: only a local teacher can be used (make_teacher says so for URLs)
        yield
        return
    try:
        yield
    except openai.APIError as e:
        detail = " ".join(str(e).split())  # one line whatever the server sent
        raise TeacherUnreachable(f"data.augment.back_translation.teacher {cfg.teacher}: {detail}") from None


def translator(cfg: BackTranslationConfig) -> GenerateFn:
    """generate_fn(prompts) → the teacher's reply to each (its thinking dropped)."""
    distill = DistillConfig(
        teacher=cfg.teacher,
        n=1,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        endpoint_model=cfg.endpoint_model,
        api_key_env=cfg.api_key_env,
        require_reasoning=False,
    )
    with _teacher_errors(cfg):
        teacher = make_teacher(distill)

    def generate(prompts: list[str]) -> list[str]:
        with _teacher_errors(cfg):
            answers = teacher([[{"role": "user", "content": p}] for p in prompts], 1)
        return [a[0].content if a and a[0].finished else "" for a in answers]

    return generate


def fill_translations(
    cfg: BackTranslationConfig, cache_dir: str | None, prompts: list[str], console: Console
) -> dict[str, str | None]:
    """prompt → back-translation from the cache, the teacher asked only for prompts the cache does not hold."""
    cache = TranslationCache(translations_path(cfg, cache_dir))
    todo = cache.missing(prompts)
    if todo:
        console.print(
            f"back-translation: {len(todo)} prompts through {cfg.pivot_language} by {cfg.teacher} → {cache.path}",
            highlight=False,
            markup=False,
        )
        made = cache.fill(todo, translator(cfg), cfg)
        console.print(f"back-translation: {made} of {len(todo)} prompts paraphrased", highlight=False)
    return cache.table


def run_translations(
    data: TrainingData, options: DataOptions, epochs: int, console: Console
) -> dict[str, str | None] | None:
    """prompt → back-translation for every prompt back_translation draws in the first `epochs` epochs of a run;
    None when back_translation is off."""
    bt = options.augment.back_translation if options.augment else None
    if bt is None:
        return None
    return fill_translations(bt, options.cache_dir, prompts_to_translate(data, options, epochs), console)
