"""Typed settings of the data stage beyond `config.DataConfig`'s basics: dataset specs, column mappings, cleaning,
augmentation. They depend on pydantic only, so `config.py` may import them (or take them over verbatim).

`DataOptions.from_config(cfg)` reads whichever of these fields `DataConfig` has, with the defaults below for the
rest, so the data stage works the same before and after the fields are added to the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnMap(_Section):
    """Which source column holds which part of a record (LLaMA-Factory `dataset_info.json` style).

    Either `messages` (a list of turns, with the tag fields saying how turns are spelled) or `prompt` + `response`
    (SFT), `prompt` + `chosen` + `rejected` (preference) or `prompt` + `answer` (task)."""

    prompt: str | None = Field(None, description="Column with the user's prompt (instruction).")
    query: str | None = Field(None, description="Column appended to the prompt after a blank line (alpaca `input`).")
    response: str | None = Field(None, description="Column with the assistant's answer.")
    history: str | None = Field(None, description="Column with earlier [prompt, response] pairs (alpaca `history`).")
    system: str | None = Field(None, description="Column with the system prompt.")
    tools: str | None = Field(None, description="Column with the tool definitions (a list or a JSON string).")
    reasoning: str | None = Field(None, description="Column with the assistant's reasoning (thinking).")
    messages: str | None = Field(None, description="Column with a list of turns (instead of prompt/response).")
    chosen: str | None = Field(None, description="Preference: column with the preferred answer.")
    rejected: str | None = Field(None, description="Preference: column with the dispreferred answer.")
    kto_tag: str | None = Field(None, description="KTO: column whose true/false says if the last answer is desirable.")
    answer: str | None = Field(None, description="Reference answer (tasks; kept as meta.answer for SFT).")
    images: str | None = Field(None, description="Column with the record's image files (`<image>` placeholders).")
    role_tag: str | None = Field(None, description="Key of a turn's role (default: `role`, else `from`).")
    content_tag: str | None = Field(None, description="Key of a turn's text (default: `content`, else `value`).")
    user_tag: str | None = Field(None, description="Role value of user turns (default: `user` or `human`).")
    assistant_tag: str | None = Field(None, description="Role value of assistant turns (default: `assistant`/`gpt`).")
    system_tag: str | None = Field(None, description="Role value of system turns (default: `system`).")
    observation_tag: str | None = Field(
        None, description="Role value of tool results (default: `observation` or `tool`)."
    )
    function_tag: str | None = Field(
        None, description="Role value of the assistant's tool calls (default: `function_call`)."
    )

    @model_validator(mode="after")
    def _something_mapped(self) -> ColumnMap:
        if not (self.messages or self.prompt):
            raise ValueError("a column mapping needs 'messages' or 'prompt'")
        return self

    @classmethod
    def from_dataset_info(cls, entry: dict[str, Any]) -> ColumnMap:
        """The mapping of one LLaMA-Factory `dataset_info.json` entry (`formatting`, `columns`, `tags`, `ranking`).

        As in LLaMA-Factory, the default columns (`instruction`/`input`/`output`, `chosen`/`rejected`) apply only
        to an entry without `columns`: an entry that lists its columns has exactly those."""
        listed = entry.get("columns")
        cols = {k: v for k, v in (listed or {}).items() if k in cls.model_fields and v}
        tags = {k: v for k, v in (entry.get("tags") or {}).items() if k in cls.model_fields and v}
        if entry.get("formatting", "alpaca") in ("sharegpt", "openai"):
            cols.setdefault("messages", "conversations")
        else:
            cols.setdefault("prompt", "instruction")
            if listed is None:
                cols.setdefault("query", "input")
                if not entry.get("ranking"):
                    cols.setdefault("response", "output")
        if listed is None and entry.get("ranking"):
            cols.update(chosen="chosen", rejected="rejected")
        return cls(**cols, **tags)

    def source_columns(self) -> set[str]:
        fields = (
            "prompt", "query", "response", "history", "system", "tools", "reasoning", "messages", "chosen",
            "rejected", "kto_tag", "answer", "images",
        )  # fmt: skip
        return {getattr(self, f) for f in fields if getattr(self, f)}


class DatasetSpec(_Section):
    """One input dataset of a run: where it is, how to read it, and how much of it to use."""

    path: str = Field(
        description="JSON/JSONL/CSV/TSV/Parquet file, a `datasets` save_to_disk directory, bundled:NAME, or an "
        "entry of a LLaMA-Factory data folder: DIR/dataset_info.json#NAME."
    )
    format: str = Field("auto", description="Record format of this dataset (`auto` detects it per record).")
    columns: ColumnMap | None = Field(None, description="Column mapping; overrides `format`.")
    weight: float = Field(
        1.0, ge=0, description="Times each record is used per epoch: 2 = twice, 0.5 = a random half, 0 = skipped."
    )
    split: str | None = Field(None, description="Split of a `datasets` DatasetDict directory (default: the only one).")
    num_samples: int | None = Field(
        None,
        gt=0,
        description="Read this many rows drawn at random (seeded); more than there are repeats rows "
        "(LLaMA-Factory's `num_samples`).",
    )

    @field_validator("path")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("path must not be empty")
        return v


def dataset_info_spec(path: str | Path, name: str, weight: float = 1.0) -> DatasetSpec:
    """A DatasetSpec for entry `name` of a LLaMA-Factory dataset_info.json (see `data/dataset_info.py`)."""
    return as_spec(DatasetSpec(path=f"{Path(path).as_posix()}#{name}", weight=weight))


class CleaningConfig(_Section):
    """Rules of the cleaning stage; every removed record goes to rejects.jsonl with the rule that removed it."""

    exact_dedup: bool = Field(True, description="Drop records whose normalised text repeats an earlier record's.")
    near_dedup: bool = Field(True, description="Drop near-duplicates (MinHash/LSH over word 5-grams).")
    near_dedup_threshold: float = Field(0.85, gt=0, le=1, description="Estimated Jaccard similarity counted as near.")
    dedup_on: Literal["conversation", "prompt"] = Field(
        "conversation", description="Compare whole conversations, or prompts only (same question, other answers)."
    )
    min_answer_chars: int = Field(1, ge=0, description="Drop records whose final answer (reasoning + text) is shorter.")
    max_chars: int | None = Field(None, gt=0, description="Drop records whose text is longer than this.")
    max_repeated_ngram_ratio: float | None = Field(
        0.5, gt=0, le=1, description="Drop answers where this share of word 3-grams are repeats (degenerate loops)."
    )
    reject_broken_encoding: bool = Field(
        True, description="Drop records with U+FFFD, mojibake (UTF-8 read as cp1252) or control characters."
    )
    pii: bool = Field(False, description="Replace personal data with [EMAIL], [PHONE], [CARD], [ID], [IP], [NAME].")
    pii_kinds: list[Literal["email", "phone", "card", "id", "ip", "name"]] = Field(
        default_factory=lambda: ["email", "phone", "card", "id"], description="Kinds of personal data to replace."
    )
    pii_names: list[str] = Field(default_factory=list, description="Names to replace (kind `name`).")
    pii_name_heuristic: bool = Field(
        False, description="Kind `name`: also replace runs of 2+ capitalised words (a heuristic, many false positives)."
    )


class BackTranslationConfig(_Section):
    """Back-translation: the user prompt translated into a pivot language and back by a teacher, made once per
    prompt and cached; the answer and reasoning are kept."""

    teacher: str = Field(
        ..., description="Translator: a model thinktune can load, or an OpenAI-compatible base URL (as distill uses)."
    )
    pivot_language: str = Field("French", description="Language the prompt goes through.")
    source_language: str = Field("English", description="Language of the prompts (the way back).")
    fraction: float = Field(
        0.5, ge=0, le=1, description="Share of records trained with their back-translated prompt each epoch (new draw)."
    )
    endpoint_model: str | None = Field(None, description="Endpoint: the model name to request (default: first).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Endpoint: environment variable holding the API key.")
    max_new_tokens: int = Field(512, gt=0, description="Generation budget per translation.")
    temperature: float = Field(0.3, gt=0, description="Sampling temperature of the translator.")


class AugmentConfig(_Section):
    """Training-time augmentation: each listed augmenter rewrites the first user prompt of a fresh seeded share of
    records every epoch; answers and reasoning never change."""

    augmenters: list[str] = Field(
        default_factory=lambda: ["templates"],
        description="Augmenters by name, applied in this order: `templates` (instruction-template variation), "
        "`back_translation` (paraphrase through a pivot language; needs `back_translation.teacher`).",
    )
    template_fraction: float = Field(
        0.5, ge=0, le=1, description="Share of records whose prompt is re-templated each epoch (new draw per epoch)."
    )
    templates: list[str] | None = Field(
        None, description="Instruction templates with a `{prompt}` slot (default: a built-in set)."
    )
    back_translation: BackTranslationConfig | None = Field(None, description="Back-translation settings.")

    @field_validator("templates")
    @classmethod
    def _has_slot(cls, v: list[str] | None) -> list[str] | None:
        for t in v or []:
            if "{prompt}" not in t:
                raise ValueError(f"template {t!r} has no {{prompt}} slot")
        return v

    @field_validator("augmenters")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from thinktune.data.augment import AUGMENTERS  # the registry; imported late, it needs the data code

        for name in v:
            if name not in AUGMENTERS:
                raise ValueError(f"unknown augmenter {name!r} (known: {', '.join(AUGMENTERS)})")
        if len(set(v)) != len(v):
            raise ValueError(f"augmenter listed twice: {v}")
        return v

    @model_validator(mode="after")
    def _settings_match_augmenters(self) -> AugmentConfig:
        listed = "back_translation" in self.augmenters
        if listed and self.back_translation is None:
            raise ValueError("augmenter back_translation needs data.augment.back_translation.teacher")
        if self.back_translation is not None and not listed:
            raise ValueError("data.augment.back_translation is set but back_translation is not in augmenters")
        given = {"template_fraction", "templates"} & self.model_fields_set
        if given and "templates" not in self.augmenters:
            raise ValueError(f"data.augment.{min(given)} is set but templates is not in augmenters")
        return self

    def active(self) -> bool:
        """Whether any augmenter changes anything."""
        return bool(
            ("templates" in self.augmenters and self.template_fraction)
            or (self.back_translation is not None and self.back_translation.fraction)
        )


class DataOptions(_Section):
    """The fields proposed for `DataConfig`, with their defaults (see docs/data.md)."""

    cleaning: CleaningConfig | None = None
    augment: AugmentConfig | None = None
    packing: bool = False
    num_proc: int = Field(1, gt=0)
    cache: bool = True
    cache_dir: str | None = None
    seed: int = 42

    @classmethod
    def from_config(cls, cfg: Any) -> DataOptions:
        return cls.model_validate({k: getattr(cfg, k) for k in cls.model_fields if hasattr(cfg, k)})


def as_spec(item: str | DatasetSpec | dict[str, Any], fmt: str = "auto") -> DatasetSpec:
    """A `data.train` entry (a path string, a spec, or a spec as a dict) as a DatasetSpec; a reference to a
    LLaMA-Factory entry (`data/dataset_info.json#name`) gets the entry's columns and num_samples."""
    from thinktune.data.dataset_info import expand_spec  # it reads ColumnMap and DatasetSpec from this module

    if isinstance(item, str):
        item = DatasetSpec(path=item, format=fmt)
    elif not isinstance(item, DatasetSpec):
        item = DatasetSpec.model_validate({"format": fmt, **item})
    return expand_spec(item)
