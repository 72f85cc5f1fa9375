"""Which run-config settings each recipe reads, and the check that refuses the rest before anything loads.

    check_settings(cfg, "grpo", data_files)   # Recipe.check, before anything loads

SFT reads every setting of `model`, `data`, `method`, `train` and `eval`; `dpo:` and `grpo:` are the sections of
their own commands, and no other command reads them (`RECIPE_SECTIONS`). DPO trains on preference pairs and GRPO on
sampled completions, each with its own loss, so a few SFT settings have nothing to act on there. A user who sets one
of these, or a `grpo.*` setting for `thinktune train` or `thinktune dpo` (a `dpo.*` one for `train` or `grpo`),
hears so in one line, naming every such setting, instead of getting a run that quietly did something else.

A setting counts as given when its value differs from the default. A config written for an SFT run (the quickstart,
an SFT YAML, a run's config.yaml, which writes every section out) therefore passes as long as it leaves the
SFT-only settings and the other recipes' sections at their defaults; an explicit `packing: false` is no reason to
stop.

A new setting in config.py is refused by DPO and GRPO until it is listed here: in `HONOURED` for the recipes whose
code reads it, in `SFT_ONLY` with the reason otherwise (tests/train/test_recipe_settings.py checks that every
setting is one or the other, for every recipe). The same table is in docs/rl.md.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from thinktune.config import RunConfig
from thinktune.data.spec import DatasetSpec
from thinktune.errors import ConfigError

CHECKED_SECTIONS = ("model", "data", "method", "train", "eval")  # export/serve: no recipe trains with them
RECIPE_SECTIONS = {"dpo": "dpo", "grpo": "grpo"}  # section → the only recipe that reads it
COMMANDS = {"sft": "train", "dpo": "dpo", "grpo": "grpo"}  # recipe → `thinktune <command>`


def all_settings() -> frozenset[str]:
    """Every `section.field` of the checked sections."""
    fields = RunConfig.model_fields
    return frozenset(f"{s}.{name}" for s in CHECKED_SECTIONS for name in fields[s].annotation.model_fields)


# Why DPO and GRPO do not read a setting that SFT reads (the first two: why GRPO does not; DPO reads them).
SFT_ONLY: dict[str, str] = {
    "data.empty_think_in_loss": "GRPO trains the completion it sampled, not a think block the template writes",
    "train.torch_compile": "GRPO samples and trains through the same layers in other modes (no grad, KV cache): "
    "Dynamo reaches its recompile limit and runs them eagerly",
    "data.augment": "rewrites SFT prompts each epoch (templates, back-translation)",
    "data.num_proc": "parallel tokenisation of the SFT data pipeline; pairs and prompts are tokenised in process",
    "data.cache": "caches the SFT data pipeline's tokenised dataset; nothing is cached for pairs or prompts",
    "data.cache_dir": "where the SFT data pipeline caches; nothing is cached for pairs or prompts",
    "data.seed": "seeds SFT's fractional dataset weights and augmentation, neither of which applies",
    "train.label_smoothing": "smooths the SFT cross-entropy; neither loss has one",
    "train.save_fisher": "the Fisher of the SFT loss on SFT samples",
    "train.packing": "pairs and rollouts are padded batches (KTO mixes rows, rollouts are left-padded)",
    "train.loss_chunk_size": "chunks the SFT cross-entropy; log-probs are already taken on completion tokens only",
    "train.liger_kernels": "not applied to the policy, its reference or sampling (not tested there)",
    "train.teacher": "logit distillation is an SFT loss",
    "train.distill_alpha": "logit distillation is an SFT loss",
    "train.distill_temperature": "logit distillation is an SFT loss",
    "train.unlikelihood_weight": "an auxiliary term of the SFT loss",
    "train.contrastive_weight": "an auxiliary term of the SFT loss",
}

# Read by the DPO and GRPO code paths. Notes where that is not obvious:
#   data.multi_turn      both train the final answer only, which is `last`; the default `every_turn` is not checked
#   data.cleaning        the cleaning stage of `thinktune data clean --kind preference|task`, on the read records
#   data.max_length      DPO: pairs longer are rejected; GRPO: prompts longer are rejected (completions have
#                        grpo.max_completion_length)
#   data.max_parity_mismatch  DPO checks its pairs; GRPO trains on the inference prompt itself (parity by design)
#   data.balance_by/_weights  sampling weights over pairs / prompts (GRPO's dynamic-sampling refills are uniform)
#   train.ewc_*, method.*: as in SFT (EWC is added to the preference / GRPO loss)
#   data.empty_think_in_loss  DPO: both answers rendered as SFT renders a sample
#   train.torch_compile  DPO: the policy's layers, compiled after the reference is built
_BOTH = all_settings() - SFT_ONLY.keys()
HONOURED: dict[str, frozenset[str]] = {
    "sft": all_settings(),
    "dpo": _BOTH | {"data.empty_think_in_loss", "train.torch_compile"},
    "grpo": _BOTH,
}

# Methods SFT trains that the RL recipes cannot, refused by value.
UNSUPPORTED_METHODS: dict[str, str] = {
    "esft": "ESFT picks experts by profiling the SFT training samples",
    "prompt_tuning": "virtual tokens shift the positions the log-probs are read at",
    "p_tuning": "virtual tokens shift the positions the log-probs are read at",
    "prefix_tuning": "virtual tokens shift the positions the log-probs are read at",
}

# Where a recipe has its own version of a refused setting.
INSTEAD: dict[tuple[str, str], str] = {
    ("dpo", "train.label_smoothing"): "conservative DPO is dpo.label_smoothing",
}


# Values that ask for nothing, so no reason to stop even where the default is `auto`: packing off, no chunked head.
INERT: dict[str, Any] = {"train.packing": False, "train.loss_chunk_size": None}


def _default(section: str, name: str) -> Any:
    return RunConfig.model_fields[section].annotation.model_fields[name].get_default(call_default_factory=True)


def given_settings(cfg: RunConfig, recipe: str, data_files: list[str] | None = None) -> list[tuple[str, Any]]:
    """(setting, value) of every setting `recipe` does not read whose value is not the default.

    `data_files` (the command line's --data) replace data.train, so data.train's dataset weights only count
    without them."""
    honoured = HONOURED[recipe]
    out = []
    for section in CHECKED_SECTIONS:
        values = getattr(cfg, section)
        for name in type(values).model_fields:
            key = f"{section}.{name}"
            value = getattr(values, name)
            if key not in honoured and value != _default(section, name) and (key not in INERT or value != INERT[key]):
                out.append((key, getattr(values, name)))
    if recipe != "sft" and not data_files:
        # SFT repeats or subsamples a dataset by its weight; the pair and prompt readers read each record once
        for i, item in enumerate(cfg.data.train):
            if isinstance(item, DatasetSpec) and item.weight != 1:
                out.append((f"data.train[{i}].weight", item.weight))
    return out


def foreign_settings(cfg: RunConfig, recipe: str) -> list[tuple[str, Any]]:
    """(setting, value) of every setting in another recipe's section (`grpo.*` for sft and dpo, `dpo.*` for sft
    and grpo) whose value is not the default."""
    out = []
    for section, owner in RECIPE_SECTIONS.items():
        if owner == recipe:
            continue
        values = getattr(cfg, section)
        for name in type(values).model_fields:
            if getattr(values, name) != _default(section, name):
                out.append((f"{section}.{name}", getattr(values, name)))
    return out


def _yaml(value: Any) -> str:
    value = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _shown(given: list[tuple[str, Any]]) -> str:
    return ", ".join(f"{k}={_yaml(v)}" if not isinstance(v, dict | list | BaseModel) else k for k, v in given)


def check_settings(cfg: RunConfig, recipe: str, data_files: list[str] | None = None) -> None:
    """One ConfigError line, before any data or weights load, when `cfg` sets what `recipe` would ignore."""
    command = f"thinktune {COMMANDS[recipe]}"
    if recipe != "sft" and cfg.method.name in UNSUPPORTED_METHODS:
        raise ConfigError(
            f"{command} cannot train method.name={cfg.method.name} ({UNSUPPORTED_METHODS[cfg.method.name]}); "
            "use lora, qlora, adalora, ia3, freeze or full"
        )
    sft_only, foreign = given_settings(cfg, recipe, data_files), foreign_settings(cfg, recipe)
    if not sft_only and not foreign:
        return
    parts = [f"{_shown(sft_only)} (SFT settings; see docs/rl.md)"] if sft_only else []
    for section in sorted({k.split(".")[0] for k, _ in foreign}):
        given = [(k, v) for k, v in foreign if k.split(".")[0] == section]
        parts.append(f"{_shown(given)} (read by thinktune {COMMANDS[RECIPE_SECTIONS[section]]} only)")
    given = sft_only + foreign
    resets = " ".join(
        f"--set {k}={_yaml(INERT[k] if k in INERT else _default(*k.split('.')))}"
        for k, _ in given
        if "[" not in k and "." in k
    )
    hints = "".join(f"; {INSTEAD[recipe, k]}" for k, _ in given if (recipe, k) in INSTEAD)
    raise ConfigError(
        f"{command} ignores {', '.join(parts)}: remove them from the config"
        + (f" or {resets}" if resets else "")
        + hints
    )
