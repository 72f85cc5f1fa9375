"""Read dataset files into canonical records; every unusable row becomes a reject with file, line and reason.

Inputs: JSONL (streamed line by line, never read whole), JSON arrays, CSV/TSV, Parquet (streamed in batches),
`datasets` directories written by `save_to_disk`, and the bundled sets (`bundled:arithmetic/train`).
A reference may end in a row slice, as `datasets` split strings do: `train.jsonl[:90%]`,
`bundled:arithmetic/train[480:]`, `data.parquet[-100:]` (rows counted in file order, rejected rows included).
"line" is the line a row starts on for text files (a CSV header is line 1) and the 1-based row number for
Parquet and `datasets` directories.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from thinktune.data.formats import RecordError
from thinktune.data.records import check_format, to_record, to_row
from thinktune.data.spec import ColumnMap, DatasetSpec, as_spec
from thinktune.errors import DataError

BUNDLED_PREFIX = "bundled:"
DATASET_DIR_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
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
    if not ref.endswith("]") or Path(ref).exists():
        return ref, None
    m = ROW_SLICE.search(ref)
    if m is None:
        raise DataError(f"{ref}: a row slice looks like [start:stop] with row numbers or percentages, e.g. [:90%]")
    return ref[: m.start()], (m.group(1), m.group(2))


def row_range(bounds: tuple[str | None, str | None], path: Path, split: str | None) -> range:
    """The rows a slice selects, as Python slicing does (negative = from the end, percentages of all rows)."""
    needs_count = any(b is not None and (b.endswith("%") or b.startswith("-")) for b in bounds)
    n = sum(1 for _ in iter_raw(path, split)) if needs_count else None

    def index(b: str | None) -> int | None:
        if b is None:
            return None
        return round(n * float(b[:-1]) / 100) if b.endswith("%") else int(b)

    start, stop = index(bounds[0]), index(bounds[1])
    if n is not None:
        return range(*slice(start, stop).indices(n))
    return range(start or 0, stop if stop is not None else 2**62)


def resolve_path(ref: str) -> Path:
    """`bundled:arithmetic/train` → the JSONL shipped in the package; anything else is a file or dataset dir (a row
    slice at the end is ignored here: see `split_row_slice`)."""
    ref, _ = split_row_slice(ref)
    if ref.startswith(BUNDLED_PREFIX):
        name = ref[len(BUNDLED_PREFIX) :].replace("/", "_")
        path = Path(str(resources.files("thinktune.data.bundled").joinpath(f"{name}.jsonl")))
        if not path.is_file():
            raise DataError(f"{ref}: no such bundled dataset (available: {', '.join(bundled_names())})")
        return path
    path = Path(ref)
    if path.is_file() or is_dataset_dir(path):
        return path
    if path.is_dir():
        raise DataError(f"{ref}: data file not found (a directory that is not a `datasets` save_to_disk folder)")
    raise DataError(f"{ref}: data file not found")


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


def iter_records(
    source: str | DatasetSpec, fmt: str = "auto", kind: str = "sft", columns: ColumnMap | None = None
) -> Iterator[dict[str, Any] | Reject]:
    """Canonical records and rejects, in file order, one row in memory at a time (JSONL, CSV, Parquet, dirs)."""
    spec = as_spec(source, fmt)
    if columns is not None:
        spec = spec.model_copy(update={"columns": columns})
    check_format(spec.format, kind, f"{spec.path}: format")
    path = resolve_path(spec.path)
    _, bounds = split_row_slice(spec.path)
    rows = row_range(bounds, path, spec.split) if bounds else None
    name = str(path)
    for i, (line, raw) in enumerate(iter_raw(path, spec.split)):
        if rows is not None and i not in rows:
            if i >= rows.stop:
                break
            continue
        if isinstance(raw, Exception):
            yield Reject(name, line, raw_error_reason(raw))
            continue
        try:
            rec = to_record(raw, kind, spec.format, spec.columns)
        except RecordError as e:
            yield Reject(name, line, str(e))
            continue
        rec["meta"].update(source=name, line=line)
        yield rec


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
