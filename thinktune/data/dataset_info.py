"""LLaMA-Factory data folders: the datasets a `dataset_info.json` names, read by those names.

    data:
      dataset_dir: data                                  # a folder holding dataset_info.json
      train: [alpaca_en_demo, glaive_toolcall_en_demo]   # names of its entries (a row slice may follow)

`DataConfig` turns each name into the reference `data/dataset_info.json#alpaca_en_demo`, which every reader
(training, evaluation, DPO, `thinktune data`) takes like a file path: `spec.as_spec` gives it the entry's column
mapping (`formatting`, `columns`, `tags`) and `num_samples`, and `reading.py` reads the entry's file (or every
file of its folder). `ranking: true` entries hold preference pairs; entries with a `kto_tag` column hold KTO's
labelled single answers. What thinktune cannot read is refused with one line naming the file, the entry and the
field: hub entries (`hf_hub_url`, `ms_hub_url`, ...), video and audio columns, `.txt`/`.arrow` files. An
`images` column is read as LLaMA-Factory's multimodal entries have it (data/images.py).

Depends only on the standard library, pydantic, spec.py and errors.py: config.py imports it.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from thinktune.data.spec import ColumnMap, DatasetSpec
from thinktune.errors import DataError

INFO_FILE = "dataset_info.json"
REFERENCE = re.compile(rf"^(?P<info>(?:.*[/\\])?{re.escape(INFO_FILE)})#(?P<name>[^\[\]]+)(?:\[[^\[\]]*\])?$")
TRAILING_ROWS = re.compile(r"\[[^\[\]]*\]$")
READABLE = (".json", ".jsonl", ".csv", ".tsv", ".parquet")  # what reading.py reads; LLaMA-Factory adds .txt, .arrow
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
MEDIA_COLUMNS = ("videos", "audios")  # images are read (data/images.py)
FORMATTINGS = ("alpaca", "sharegpt", "openai")
NAMED_FIELDS = ("train", "test", "validation")  # the DataConfig fields whose entries may be names
SHOWN_NAMES = 30


@dataclass(frozen=True)
class DatasetEntry:
    """One checked entry of a dataset_info.json: where its rows are and how to read them."""

    name: str
    info: Path
    path: Path  # file_name: a file or a folder
    files: tuple[Path, ...]  # the data files, in reading order
    columns: ColumnMap
    ranking: bool
    num_samples: int | None

    @property
    def where(self) -> str:
        return f"{self.info}: {self.name}"

    @property
    def kto(self) -> bool:
        return self.columns.kto_tag is not None


def parse_reference(ref: str) -> tuple[Path, str] | None:
    """`data/dataset_info.json#alpaca_en_demo[:100]` → (data/dataset_info.json, "alpaca_en_demo"); None for any
    other reference."""
    m = REFERENCE.match(ref)
    return (Path(m["info"]), m["name"]) if m else None


def read_info(info: Path) -> dict[str, Any]:
    try:
        text = info.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{info}: not found (data.dataset_dir must be a folder holding {INFO_FILE})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{info}: unreadable ({e})") from None
    try:
        datasets = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{info}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(datasets, dict):
        raise DataError(f"{info}: must be a JSON object mapping dataset names to entries")
    return datasets


def load_entry(info: Path, name: str) -> DatasetEntry:
    """Entry `name` of `info`, checked; anything thinktune cannot read is a DataError naming the entry and field."""
    datasets = read_info(info)
    if name not in datasets:
        raise DataError(_unknown(info, name, datasets))
    entry, where = datasets[name], f"{info}: {name}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: an entry must be a JSON object")
    for key in HUB_KEYS:
        if key in entry:
            raise DataError(
                f"{where}: {key} {entry[key]!r}: thinktune reads local files only; download the dataset and give "
                "the entry a file_name"
            )
    if not isinstance(entry.get("file_name"), str) or not entry["file_name"].strip():
        raise DataError(f"{where}: file_name: missing (the data file or folder, relative to {info.parent})")
    if entry.get("formatting", "alpaca") not in FORMATTINGS:
        raise DataError(f"{where}: formatting {entry['formatting']!r}: expected one of {', '.join(FORMATTINGS)}")
    for key in ("columns", "tags"):
        if key in entry and not isinstance(entry[key], dict):
            raise DataError(f"{where}: {key}: must be a JSON object")
    for key in MEDIA_COLUMNS:
        if (entry.get("columns") or {}).get(key):
            raise DataError(f"{where}: columns.{key}: {key} are not read (image datasets are: columns.images)")
    if not isinstance(entry.get("ranking", False), bool):
        raise DataError(f"{where}: ranking: must be true or false, got {entry['ranking']!r}")
    num_samples = entry.get("num_samples")
    if num_samples is not None and (type(num_samples) is not int or num_samples < 1):
        raise DataError(f"{where}: num_samples: must be a positive whole number, got {num_samples!r}")
    if entry.get("split", "train") != "train":  # load_dataset gives a local file one split: train
        raise DataError(f"{where}: split {entry['split']!r}: a local file has only the split 'train'")
    try:
        columns = ColumnMap.from_dataset_info(entry)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(["columns", *map(str, err["loc"])])
        raise DataError(
            f"{where}: {field}: {err['msg'].removeprefix('Value error, ')} (got {err['input']!r})"
        ) from None
    path = info.parent / entry["file_name"]
    return DatasetEntry(name, info, path, _data_files(path, where), columns, entry.get("ranking", False), num_samples)


def _data_files(path: Path, where: str) -> tuple[Path, ...]:
    """file_name as LLaMA-Factory reads it: one file, or every file of a folder (all of one type)."""
    if path.is_file():
        files: tuple[Path, ...] = (path,)
    elif path.is_dir():
        files = tuple(sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")))
        if not files:
            raise DataError(f"{where}: file_name {path}: an empty folder")
    else:
        raise DataError(f"{where}: file_name {path}: not found")
    suffixes = sorted({p.suffix.lower() for p in files})
    if len(suffixes) > 1:
        raise DataError(f"{where}: file_name {path}: the folder mixes file types ({', '.join(suffixes)})")
    if suffixes[0] not in READABLE:
        kind = f"{suffixes[0]} files" if suffixes[0] else "files without a suffix"
        raise DataError(f"{where}: file_name {path}: {kind} are not supported (readable: {', '.join(READABLE)})")
    return files


def _unknown(info: Path, name: str, datasets: dict[str, Any]) -> str:
    local = sorted(n for n, e in datasets.items() if isinstance(e, dict) and "file_name" in e)
    close = difflib.get_close_matches(name, list(datasets), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    shown = ", ".join(local[:SHOWN_NAMES])
    if len(local) > SHOWN_NAMES:
        shown += f", … ({len(local) - SHOWN_NAMES} more)"
    return f"{info}: no dataset {name!r} ({hint}local datasets: {shown or 'none'})"


def entry_of(ref: str) -> DatasetEntry | None:
    """The entry a reference points to; None for a reference that is not into a dataset_info.json."""
    parsed = parse_reference(ref)
    return load_entry(*parsed) if parsed else None


def expand_spec(spec: DatasetSpec) -> DatasetSpec:
    """A spec of a dataset_info.json reference with the entry's columns and num_samples where the spec sets none
    (so they are part of the spec that names a data cache entry); any other spec unchanged."""
    entry = entry_of(spec.path)
    if entry is None:
        return spec
    return spec.model_copy(
        update={
            "columns": spec.columns or entry.columns,
            "num_samples": spec.num_samples or entry.num_samples,
        }
    )


def _looks_like_name(item: str) -> bool:
    """Not a path (no separator, no data file suffix, nothing of that name on disk), a bundled set or a reference."""
    return not (
        not item
        or item.startswith("bundled:")
        or any(c in item for c in "/\\#")
        or Path(item).suffix.lower() in (*READABLE, ".txt", ".arrow")
        or Path(item).exists()
    )


def reference(item: str, dataset_dir: str | Path) -> str:
    """A name from `dataset_dir`'s dataset_info.json (with an optional row slice) → its checked reference; a path,
    a bundled set or a reference is returned unchanged."""
    rows = TRAILING_ROWS.search(item)
    name = item[: rows.start()] if rows and not Path(item).exists() else item
    if not _looks_like_name(name):
        return item
    info = Path(dataset_dir) / INFO_FILE
    load_entry(info, name)
    return f"{info.as_posix()}#{item}"


def with_references(data: dict[str, Any]) -> dict[str, Any]:
    """DataConfig input whose `train`, `test` and `validation` may name datasets of `dataset_dir`, with every name
    replaced by its reference (so the run's config.yaml reads the same data without dataset_dir)."""
    root = data.get("dataset_dir")
    if not root:
        return data
    out = dict(data)
    for field in NAMED_FIELDS:
        value = out.get(field)
        try:
            if isinstance(value, list):
                out[field] = [_named(v, str(root)) for v in value]
            elif value is not None:
                out[field] = _named(value, str(root))
        except DataError as e:
            raise DataError(f"data.{field}: {e}") from None
    return out


def _named(item: Any, root: str) -> Any:
    if isinstance(item, str):
        return reference(item, root)
    if isinstance(item, DatasetSpec):
        return item.model_copy(update={"path": reference(item.path, root)})
    if isinstance(item, dict) and isinstance(item.get("path"), str):
        return {**item, "path": reference(item["path"], root)}
    return item
