"""The launch form, generated from the pydantic config: one field per setting of the sections a training command
reads, its default and description taken from config.py (so the form never drifts from the config), and the way
back: the fields the user changed become `--set key=value` overrides, validated by the CLI's own config loading.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from thinktune.config import SECTIONS, RunConfig, load_config

FORM_SECTIONS = ("model", "data", "method", "train", "eval", "dpo", "grpo")
RECIPES = {"train": "sft", "dpo": "dpo", "grpo": "grpo"}  # command → recipe name (train/settings.py)


@dataclass(frozen=True)
class FieldSpec:
    key: str  # "train.learning_rate"
    kind: Literal["bool", "choice", "str", "yaml"]  # yaml: numbers, lists, mappings, sub-sections (YAML text)
    description: str
    choices: tuple[str, ...] = ()
    nullable: bool = False


def _kind(annotation: Any) -> tuple[str, tuple[str, ...], bool]:
    args = typing.get_args(annotation)
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    nullable = union and type(None) in args
    inner = [a for a in args if a is not type(None)] if union else [annotation]
    if len(inner) == 1:
        (only,) = inner
        if only is bool and not nullable:
            return "bool", (), False
        if typing.get_origin(only) is Literal:
            return "choice", tuple(str(c) for c in typing.get_args(only)), nullable
        if only is str:
            return "str", (), nullable
    return "yaml", (), nullable


def form_fields(sections: tuple[str, ...] = FORM_SECTIONS) -> list[FieldSpec]:
    """Every setting of `sections`, in config.py's order; a nested section (data.rag) is one YAML field."""
    specs = [FieldSpec("name", "str", RunConfig.model_fields["name"].description or "")]
    for section in sections:
        for name, f in SECTIONS[section].model_fields.items():
            kind, choices, nullable = _kind(f.annotation)
            specs.append(FieldSpec(f"{section}.{name}", kind, f.description or "", choices, nullable))
    return specs


def value_at(cfg: RunConfig, key: str) -> Any:
    node: Any = cfg.model_dump(mode="json")
    for part in key.split("."):
        node = node[part]
    return node


def to_widget(spec: FieldSpec, value: Any) -> Any:
    """A config value as its widget shows it."""
    if spec.kind == "bool":
        return bool(value)
    if value is None:
        return ""
    if spec.kind in ("choice", "str"):
        return str(value)
    return json.dumps(value)  # JSON is YAML's flow style: one line, read back by --set


def from_widget(spec: FieldSpec, shown: Any) -> Any:
    """A widget's value as the config value it stands for (yaml fields that do not parse stay text)."""
    if spec.kind == "bool":
        return bool(shown)
    text = "" if shown is None else str(shown)
    if not text.strip():
        return None
    if spec.kind in ("choice", "str"):
        return text
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def form_values(cfg: RunConfig, specs: list[FieldSpec]) -> list[Any]:
    return [to_widget(s, value_at(cfg, s.key)) for s in specs]


def overrides(base: RunConfig, specs: list[FieldSpec], shown: list[Any]) -> list[str]:
    """`key=value` for each field whose value differs from `base` (what `--set` would need to say)."""
    sets = []
    for spec, widget in zip(specs, shown, strict=True):
        value = from_widget(spec, widget)
        if value == value_at(base, spec.key) or (value is None and not spec.nullable and spec.kind != "yaml"):
            continue
        if value is None:
            sets.append(f"{spec.key}=")
        elif spec.kind in ("str", "choice"):
            sets.append(f"{spec.key}={json.dumps(value)}")  # quoted: a prompt with `: ` stays one string
        elif spec.kind == "bool":
            sets.append(f"{spec.key}={'true' if value else 'false'}")
        else:
            sets.append(f"{spec.key}={str(widget).strip()}")
    return sets


def check(base_config: Path | None, sets: list[str], command: str) -> RunConfig:
    """The config `thinktune <command> [-c base_config] --set ...` would run, or the CLI's one-line ConfigError."""
    from thinktune.train.settings import check_settings

    cfg = load_config(base_config, sets)
    check_settings(cfg, RECIPES[command])
    return cfg


def field_label(spec: FieldSpec) -> str:
    return spec.key.split(".", 1)[-1]


def section_of(spec: FieldSpec) -> str:
    return spec.key.split(".", 1)[0] if "." in spec.key else ""


def sections_in(specs: list[FieldSpec]) -> list[str]:
    out: list[str] = []
    for s in specs:
        if section_of(s) not in out:
            out.append(section_of(s))
    return out
