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
from thinktune.hub import HubMissing, snapshot

HF_PREFIX = "hf:"
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
    """The dataset repo's snapshot folder (downloaded first when online); its name is the commit it holds."""
    hub = parse_hf_ref(ref)
    try:
        return snapshot(hub.repo, hub.revision, "dataset")
    except HubMissing as e:
        raise DataError(f"{ref}: {e}") from None


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
