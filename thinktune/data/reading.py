"""Read dataset files into canonical records; every unusable row becomes a reject with file, line and reason.

Inputs: JSONL (streamed line by line, never read whole), JSON arrays, CSV/TSV, Parquet (streamed in batches),
`datasets` directories written by `save_to_disk`, the bundled sets (`bundled:arithmetic/train`), the entries of a
LLaMA-Factory data folder (`data/dataset_info.json#alpaca_en_demo`: see dataset_info.py), and datasets by Hub id
(`hf:openai/gsm8k:main[train]`: see hub_datasets.py).
A reference may end in a row slice, as `datasets` split strings do: `train.jsonl[:90%]`,
`bundled:arithmetic/train[480:]`, `data.parquet[-100:]` (rows counted in file order, rejected rows included).
"line" is the line a row starts on for text files (a CSV header is line 1) and the 1-based row number for
Parquet, `datasets` directories and Hub datasets.
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import csv
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from thinktune.data.columns import kto_label
from thinktune.data.dataset_info import INFO_FILE, entry_of
from thinktune.data.formats import RecordError
from thinktune.data.hub_datasets import ends_in_split, hub_dataset_digest, hub_dataset_dir, is_hf_ref, iter_hub_rows
from thinktune.data.images import check_images
from thinktune.data.records import check_format, to_record, to_row
from thinktune.data.spec import ColumnMap, DatasetSpec, as_spec
from thinktune.errors import DataError

BUNDLED_PREFIX = "bundled:"
# What save_to_disk writes; a folder with only a dataset_info.json is a LLaMA-Factory data folder, not a dataset.
DATASET_DIR_MARKERS = ("state.json", "dataset_dict.json")
KTO = "kto"  # LLaMA-Factory KTO rows: SFT records whose meta.kto_label says if the last answer is desirable
KIND_WORDS = {"sft": "conversations", "preference": "preference pairs", "task": "tasks", KTO: "KTO labelled answers"}
NUM_SAMPLES_SEED = 0
PARQUET_BATCH = 1024
# CSV/Parquet cells holding a JSON list or object are decoded for these fields (a CSV cell is always text).
STRUCTURED_FIELDS = {"messages", "conversations", "prompt", "chosen", "rejected"}


@dataclass
class Reject:
    file: str
    line: int
    reason: str
    rule: str | None = None  # the cleaning rule that removed the record; None for unusable records

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "line": self.line, "reason": self.reason}
        if self.rule:
            out["rule"] = self.rule
        return out


@dataclass
class LoadedRecords:
    records: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.records) + len(self.rejects)

    def extend(self, other: LoadedRecords) -> None:
        self.records += other.records
        self.rejects += other.rejects


class RowError(Exception):
    """A row that could not even be parsed (bad UTF-8, a CSV row of the wrong width); the message is the reason."""


def is_dataset_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in DATASET_DIR_MARKERS)


ROW_SLICE = re.compile(r"\[(-?\d+%?)?:(-?\d+%?)?\]$")


def split_row_slice(ref: str) -> tuple[str, tuple[str | None, str | None] | None]:
    """`train.jsonl[10:50%]` → ("train.jsonl", ("10", "50%")); a reference without a slice (or a file whose name
    really ends in brackets) → (ref, None)."""
    if not ref.endswith("]") or Path(ref).exists() or ends_in_split(ref):
        return ref, None
    m = ROW_SLICE.search(ref)
    if m is None:
        raise DataError(f"{ref}: a row slice looks like [start:stop] with row numbers or percentages, e.g. [:90%]")
    return ref[: m.start()], (m.group(1), m.group(2))


def row_range(bounds: tuple[str | None, str | None], count: Callable[[], int], exact: bool = False) -> range:
    """The rows a slice selects, as Python slicing does (negative = from the end, percentages of all rows);
    `count` gives the number of rows, asked only when the bounds (or `exact`) need it."""
    needs_count = exact or any(b is not None and (b.endswith("%") or b.startswith("-")) for b in bounds)
    n = count() if needs_count else None

    def index(b: str | None) -> int | None:
        if b is None:
            return None
        return round(n * float(b[:-1]) / 100) if b.endswith("%") else int(b)

    start, stop = index(bounds[0]), index(bounds[1])
    if n is not None:
        return range(*slice(start, stop).indices(n))
    return range(start or 0, stop if stop is not None else 2**62)


def sample_rows(rows: range, k: int) -> Counter[int]:
    """LLaMA-Factory's `num_samples`: k of the rows drawn without replacement, then with replacement for those
    beyond the number of rows (every row is used before any repeats); seeded, so a run reads the same rows again."""
    if not rows:
        return Counter()
    rng = random.Random(NUM_SAMPLES_SEED)
    picks = rng.sample(rows, min(k, len(rows)))
    return Counter(picks + [rng.choice(rows) for _ in range(k - len(picks))])


def resolve_path(ref: str) -> Path:
    """`bundled:arithmetic/train` → the JSONL shipped in the package; `DIR/dataset_info.json#NAME` → the entry's file
    or folder; `hf:org/name...` → the dataset repo's snapshot in the HF cache (downloaded when online); anything else
    is a file or dataset dir (a row slice at the end is ignored here: see `split_row_slice`)."""
    ref, _ = split_row_slice(ref)
    if is_hf_ref(ref):
        return hub_dataset_dir(ref)
    if ref.startswith(BUNDLED_PREFIX):
        name = ref[len(BUNDLED_PREFIX) :].replace("/", "_")
        path = Path(str(resources.files("thinktune.data.bundled").joinpath(f"{name}.jsonl")))
        if not path.is_file():
            raise DataError(f"{ref}: no such bundled dataset (available: {', '.join(bundled_names())})")
        return path
    entry = entry_of(ref)
    if entry is not None:
        return entry.path
    path = Path(ref)
    if path.is_file() or is_dataset_dir(path):
        return path
    if path.is_dir() and (path / INFO_FILE).is_file():
        raise DataError(
            f"{ref}: a LLaMA-Factory data folder (it holds {INFO_FILE}): set data.dataset_dir: {ref} (thinktune data: "
            "--dataset-dir) and name its datasets"
        )
    if path.is_dir():
        raise DataError(f"{ref}: data file not found (a directory that is not a `datasets` save_to_disk folder)")
    if "/" not in ref and not path.suffix:
        raise DataError(f"{ref}: data file not found (a dataset of a LLaMA-Factory data folder? set data.dataset_dir)")
    raise DataError(f"{ref}: data file not found")


def source_digest(ref: str) -> str:
    """What identifies a reference's contents for the data cache: a Hub dataset's commit, else the files' sha256."""
    ref, _ = split_row_slice(ref)
    if is_hf_ref(ref):
        return hub_dataset_digest(ref)
    from thinktune.data.cache import file_digest

    return file_digest(resolve_path(ref))


def source_files(ref: str) -> list[Path]:
    """The files (or `datasets` directory) a reference reads, in order: one, or every file of an entry's folder."""
    entry = entry_of(split_row_slice(ref)[0])
    return list(entry.files) if entry is not None else [resolve_path(ref)]


def bundled_names() -> list[str]:
    root = resources.files("thinktune.data.bundled")
    names = sorted(p.name[: -len(".jsonl")] for p in root.iterdir() if p.name.endswith(".jsonl"))
    return [BUNDLED_PREFIX + n.replace("_", "/", 1) for n in names]


def iter_raw(path: Path, split: str | None = None) -> Iterator[tuple[int, Any | Exception]]:
    """(line, parsed row or the error that kept it from parsing) for every row of a dataset file or directory."""
    path = Path(path)
    if path.is_dir():
        return _iter_dataset_dir(path, split)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _iter_parquet(path)
    if suffix in (".csv", ".tsv"):
        return _iter_csv(path, "\t" if suffix == ".tsv" else ",")
    if suffix == ".json":
        return _iter_json_array(path)
    return _iter_jsonl(path)


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any | Exception]]:
    # Binary lines end at b"\n" only: text-mode splitting would also split inside strings holding U+2028, U+0085.
    with open(path, "rb") as f:
        for i, line in enumerate(f, start=1):
            if i == 1 and line.startswith(codecs.BOM_UTF8):  # a leading BOM is not part of record 1
                line = line[len(codecs.BOM_UTF8) :]
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield i, RowError(f"invalid UTF-8 (byte {line[e.start]:#04x} at byte {e.start + 1} of the line)")
                continue
            if not text.strip():
                continue
            try:
                yield i, json.loads(text)
            except json.JSONDecodeError as e:
                yield i, e


def _iter_json_array(path: Path) -> Iterator[tuple[int, Any | Exception]]:
    data = path.read_bytes()  # one JSON document: it has to be parsed whole
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    bad_lines = set()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        bad_lines = {i for i, b in enumerate(data.split(b"\n"), 1) if not _decodes(b)}
        text = data.decode("utf-8", errors="replace")
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        hint = " — one record per line? name the file .jsonl" if e.msg == "Extra data" else ""
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}){hint}") from None
    if not isinstance(items, list):
        raise DataError(f"{path}:1: a .json dataset must be a list of records")
    starts = _item_lines(text, len(items))
    ends = [*(s - 1 for s in starts[1:]), text.count("\n") + 1]
    for start, end, item in zip(starts, ends, items, strict=True):
        if any(start <= b <= max(start, end) for b in bad_lines):
            yield start, RowError("invalid UTF-8")
        else:
            yield start, item


def _decodes(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _item_lines(text: str, n: int) -> list[int]:
    """Line where each top-level array item starts (best effort: falls back to 1-based item index)."""
    decoder, lines, pos = json.JSONDecoder(), [], text.index("[") + 1 if n else 0
    try:
        for _ in range(n):
            while text[pos] in " \t\r\n,":
                pos += 1
            lines.append(text.count("\n", 0, pos) + 1)
            _, pos = decoder.raw_decode(text, pos)
        return lines
    except (ValueError, IndexError):
        return list(range(1, n + 1))


def _decode_cells(row: dict[str, Any]) -> dict[str, Any]:
    for key in STRUCTURED_FIELDS & row.keys():
        value = row[key]
        if isinstance(value, str) and value[:1] in "[{":
            with contextlib.suppress(json.JSONDecodeError):
                row[key] = json.loads(value)
    return row


@contextlib.contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    old = csv.field_size_limit()
    csv.field_size_limit(limit)  # long reasoning traces exceed the default 128 kB
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _iter_csv(path: Path, delimiter: str) -> Iterator[tuple[int, Any | Exception]]:
    # surrogateescape keeps bad bytes visible as lone surrogates, so one bad row is rejected, not the file
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f, _csv_field_limit(2**31 - 1):
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                return
            header = [h.strip() for h in header]
            start = reader.line_num + 1
            for cells in reader:
                line, start = start, reader.line_num + 1
                if not cells or all(not c.strip() for c in cells):
                    continue
                if any(_has_surrogate(c) for c in cells):
                    yield line, RowError("invalid UTF-8")
                elif len(cells) != len(header):
                    yield line, RowError(f"CSV row has {len(cells)} fields, the header has {len(header)}")
                else:
                    yield line, _decode_cells(dict(zip(header, cells, strict=True)))
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: invalid CSV ({e})") from None


def _has_surrogate(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any | Exception]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH):
        for row in batch.to_pylist():
            n += 1
            yield n, _decode_cells(row)


def _iter_dataset_dir(path: Path, split: str | None) -> Iterator[tuple[int, Any | Exception]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many kinds; any of them means the folder is unreadable
        raise DataError(f"{path}: not a readable `datasets` directory ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if split is None and len(names) == 1:
            split = names[0]
        if split not in ds:
            raise DataError(f"{path}: choose a split with `split` (available: {', '.join(names)})")
        ds = ds[split]
    elif split is not None:
        raise DataError(f"{path}: a single dataset has no splits (remove split: {split})")
    n = 0
    for batch in ds.iter(batch_size=PARQUET_BATCH):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys), strict=True):
            n += 1
            yield n, _decode_cells(dict(zip(keys, values, strict=True)))


def raw_error_reason(err: Exception) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"invalid JSON: {err.msg}"
    return str(err)


def check_kind(spec: DatasetSpec, kind: str) -> None:
    """Refuse, before a row is read, a dataset whose records are of another kind than the one asked for: a
    LLaMA-Factory ranking entry outside preference data, a KTO dataset (a `kto_tag` column) outside KTO."""
    if kind == KTO:
        check_format(spec.format, "sft", f"{spec.path}: format")
    else:
        check_format(spec.format, kind, f"{spec.path}: format")
    entry = entry_of(split_row_slice(spec.path)[0])
    label = entry.where if entry else spec.path
    wanted = KIND_WORDS.get(kind, kind)
    kto_tag = spec.columns.kto_tag if spec.columns else None
    if kto_tag and kind != KTO:
        raise DataError(
            f"{label}: a KTO dataset (single answers labelled by column '{kto_tag}'), not {wanted}: train on it with "
            "`thinktune dpo --loss kto` (thinktune data: --kind kto)"
        )
    if kind == KTO and not kto_tag:
        raise DataError(f"{label}: not a KTO dataset (no kto_tag column labels its answers desirable or not)")
    if entry and entry.ranking and kind != "preference":
        raise DataError(
            f"{label}: a ranking dataset (ranking: true) holds preference pairs, not {wanted}: train on it with "
            "`thinktune dpo` (thinktune data: --kind preference)"
        )
    if entry and not entry.ranking and kind == "preference":
        raise DataError(f"{label}: not a ranking dataset (no ranking: true), so it holds no preference pairs")


def check_source(source: str | DatasetSpec, kind: str = "sft") -> None:
    """What iter_records refuses before reading a row (a missing file, a dataset of another kind), checked now:
    recipes call it before loading a model."""
    spec = as_spec(source)
    check_kind(spec, kind)
    source_files(spec.path)


def is_kto(source: str | DatasetSpec) -> bool:
    """Whether a dataset holds KTO's labelled single answers (a `kto_tag` column) rather than pairs."""
    spec = as_spec(source)
    return bool(spec.columns and spec.columns.kto_tag)


def iter_records(
    source: str | DatasetSpec, fmt: str = "auto", kind: str = "sft", columns: ColumnMap | None = None
) -> Iterator[dict[str, Any] | Reject]:
    """Canonical records and rejects, in file order, one row in memory at a time (JSONL, CSV, Parquet, dirs).

    kind "kto" reads a KTO dataset as SFT records with `meta.kto_label`. A dataset's `num_samples` repeats a row
    drawn more than once (the copies are consecutive)."""
    spec = as_spec(source, fmt)
    if columns is not None:
        spec = spec.model_copy(update={"columns": columns})
    check_kind(spec, kind)
    files = source_files(spec.path)
    ref, bounds = split_row_slice(spec.path)
    rows = picks = None
    if bounds or spec.num_samples:
        count = lambda: sum(1 for _ in _source_rows(ref, files, spec.split))  # noqa: E731
        rows = row_range(bounds or (None, None), count, exact=spec.num_samples is not None)
    if spec.num_samples:
        picks = sample_rows(rows, spec.num_samples)
    for i, (name, line, raw) in enumerate(_source_rows(ref, files, spec.split)):
        if rows is not None and i not in rows:
            if i >= rows.stop:
                break
            continue
        times = picks[i] if picks is not None else 1
        if times:
            item = _record(raw, name, line, spec, kind)
            yield item
            for _ in range(times - 1):
                yield copy.deepcopy(item)


def _source_rows(ref: str, files: list[Path], split: str | None) -> Iterator[tuple[str, int, Any | Exception]]:
    if is_hf_ref(ref):
        return ((ref, line, _decode_cells(raw)) for line, raw in iter_hub_rows(ref, split))
    return _file_rows(files, split)


def _file_rows(files: list[Path], split: str | None) -> Iterator[tuple[str, int, Any | Exception]]:
    for path in files:
        name = str(path)
        for line, raw in iter_raw(path, split):
            yield name, line, raw


def _record(raw: Any, name: str, line: int, spec: DatasetSpec, kind: str) -> dict[str, Any] | Reject:
    if isinstance(raw, Exception):
        return Reject(name, line, raw_error_reason(raw))
    try:
        if kind == KTO:
            label = kto_label(raw, spec.columns)
            rec = to_record(raw, "sft", spec.format, spec.columns)
            rec["meta"]["kto_label"] = label
        else:
            rec = to_record(raw, kind, spec.format, spec.columns)
        if rec.get("images"):  # local files, relative to the data file
            rec["images"] = check_images(rec["images"], None if is_hf_ref(name) else Path(name).parent)
    except RecordError as e:
        return Reject(name, line, str(e))
    rec["meta"].update(source=name, line=line)
    return rec


def read_records(
    ref: str | DatasetSpec, fmt: str = "auto", kind: str = "sft", columns: ColumnMap | None = None
) -> LoadedRecords:
    out = LoadedRecords()
    for item in iter_records(ref, fmt, kind, columns):
        if isinstance(item, Reject):
            out.rejects.append(item)
        else:
            out.records.append(item)
    return out


def check_bad_fraction(loaded: LoadedRecords, limit: float, what: str) -> None:
    if loaded.total == 0:
        raise DataError(f"{what}: no records found")
    frac = len(loaded.rejects) / loaded.total
    if frac > limit:
        first = loaded.rejects[0]
        raise DataError(
            f"{what}: {len(loaded.rejects)}/{loaded.total} records unusable ({frac:.0%} > data.max_bad_fraction="
            f"{limit}); first: {first.file}:{first.line}: {first.reason}"
        )


def write_rejects(rejects: Iterable[Reject], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rejects:
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")


def write_records(records: Iterable[dict[str, Any]], path: Path) -> int:
    """Canonical records as JSONL rows that read back into the same records; returns how many were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(to_row(rec), ensure_ascii=False) + "\n")
            n += 1
    return n
