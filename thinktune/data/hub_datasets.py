"""Datasets by Hub id: `hf:org/name[@revision][:config][[split]]`, e.g. `hf:openai/gsm8k:main[train]`.

The dataset repo is a snapshot in huggingface_hub's cache (the same cache, offline switch and one-line errors as
models by Hub id: thinktune.hub), read with `datasets.load_dataset` on that folder in streaming mode: the repo's
dataset card decides the configs and splits, as it does for `load_dataset("org/name")`, and the rows stream from
its Parquet/JSON/CSV files without an Arrow copy in the `datasets` cache. "line" is the 1-based row number.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinktune.errors import DataError
from thinktune.hub import HubMissing, offline, snapshot

HF_PREFIX = "hf:"
CARD = "README.md"  # the dataset card: its YAML `configs:` name each config's data files
HF_REF = re.compile(
    r"^hf:(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[^:\[\]]+))?"
    r"(?::(?P<config>[^\[\]]+))?(?:\[(?P<split>[\w.-]+)\])?$"
)


@dataclass(frozen=True)
class HubDatasetRef:
    repo: str
    revision: str | None
    config: str | None
    split: str | None


def is_hf_ref(ref: str) -> bool:
    return ref.startswith(HF_PREFIX)


def ends_in_split(ref: str) -> bool:
    """`hf:org/name[train]`: the brackets are a split, not a row slice."""
    return is_hf_ref(ref) and re.search(r"\[[\w.-]+\]$", ref) is not None


def parse_hf_ref(ref: str) -> HubDatasetRef:
    m = HF_REF.match(ref)
    if m is None:
        raise DataError(
            f"{ref}: a Hub dataset is hf:org/name[@revision][:config][[split]], e.g. hf:openai/gsm8k:main[train]"
        )
    return HubDatasetRef(m["repo"], m["revision"], m["config"], m["split"])


def hub_dataset_dir(ref: str) -> Path:
    """The dataset repo's snapshot folder; its name is the commit it holds. Online, the card is downloaded first,
    then only the files of the config asked for (a repo of many configs is not downloaded whole)."""
    hub = parse_hf_ref(ref)
    try:
        if offline():
            return snapshot(hub.repo, hub.revision, "dataset")
        card = snapshot(hub.repo, hub.revision, "dataset", [CARD]) / CARD
        try:
            files = config_files(card_metadata(card), hub.config)
        except DataError as e:
            raise DataError(f"{ref}: {e}") from None
        return snapshot(hub.repo, hub.revision, "dataset", files)
    except HubMissing as e:
        raise DataError(f"{ref}: {e}") from None


def card_metadata(card: Path) -> dict | None:
    from huggingface_hub.repocard import metadata_load

    return metadata_load(card) if card.is_file() else None


def config_files(card: dict | None, config: str | None) -> list[str] | None:
    """Patterns of the files one config reads, from the card's `configs:` (as `datasets` reads them), plus the card;
    None = the whole repo (a card without `configs:`: `datasets` infers the layout from every file). A config the
    card does not name is refused here, before anything large is downloaded."""
    configs = [c for c in (card or {}).get("configs") or [] if isinstance(c, dict)]
    if not configs:
        return None
    named = {c.get("config_name", "default"): c for c in configs}
    if config is None:
        default = next((c for c in configs if c.get("default")), None) or named.get("default")
        chosen = default or (configs[0] if len(configs) == 1 else None)
        if chosen is None:
            raise DataError(f"choose a config, as hf:org/name:CONFIG[split] (available: {', '.join(named)})")
    elif config not in named:
        raise DataError(f"no config '{config}' (available: {', '.join(named)})")
    else:
        chosen = named[config]
    data_files = chosen.get("data_files")
    if isinstance(data_files, dict):  # {split: pattern(s)}
        data_files = list(data_files.values())
    patterns: list[str] = []
    for item in data_files if isinstance(data_files, list) else [data_files]:
        paths = item.get("path") if isinstance(item, dict) else item
        patterns += [p for p in (paths if isinstance(paths, list) else [paths]) if isinstance(p, str)]
    return [CARD, *patterns] if patterns else None


def hub_dataset_digest(ref: str) -> str:
    """What identifies the rows: the resolved commit (config and split are in the reference itself)."""
    return f"{parse_hf_ref(ref).repo}@{hub_dataset_dir(ref).name}"


def iter_hub_rows(ref: str, split: str | None = None) -> Iterator[tuple[int, Any]]:
    """(1-based row number, row) of one split of a Hub dataset; `split` (a spec's) applies when the ref has none."""
    import datasets

    hub = parse_hf_ref(ref)
    folder = hub_dataset_dir(ref)
    split = hub.split or split
    try:
        ds = datasets.load_dataset(str(folder), hub.config, streaming=True)
    except ValueError as e:  # an unknown config: datasets names the available ones
        raise DataError(f"{ref}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # a repo without data files datasets can read raises many kinds
        raise DataError(f"{ref}: not readable by `datasets` ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    names = list(ds)
    if split is None and len(names) == 1:
        split = names[0]
    if split not in ds:
        raise DataError(f"{ref}: choose a split, e.g. hf:{hub.repo}[{names[0]}] (available: {', '.join(names)})")
    yield from enumerate(ds[split], start=1)
