"""Read JSON / JSONL files into canonical records; every unusable record becomes a reject with file, line and reason."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from thinktune.data.formats import RecordError, to_sft_record
from thinktune.errors import DataError

BUNDLED_PREFIX = "bundled:"


@dataclass
class Reject:
    file: str
    line: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "reason": self.reason}


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


def resolve_path(ref: str) -> Path:
    """`bundled:arithmetic/train` → the JSONL shipped in the package; anything else is a file path."""
    if ref.startswith(BUNDLED_PREFIX):
        name = ref[len(BUNDLED_PREFIX) :].replace("/", "_")
        path = Path(str(resources.files("thinktune.data.bundled").joinpath(f"{name}.jsonl")))
        if not path.is_file():
            raise DataError(f"{ref}: no such bundled dataset (available: {', '.join(bundled_names())})")
        return path
    path = Path(ref)
    if not path.is_file():
        raise DataError(f"{ref}: data file not found")
    return path


def bundled_names() -> list[str]:
    root = resources.files("thinktune.data.bundled")
    names = sorted(p.name[: -len(".jsonl")] for p in root.iterdir() if p.name.endswith(".jsonl"))
    return [BUNDLED_PREFIX + n.replace("_", "/", 1) for n in names]


def iter_raw(path: Path) -> list[tuple[int, Any | Exception]]:
    """(line, parsed JSON or the parse error) for every record in a .jsonl or .json file."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")  # -sig: a leading BOM is not part of record 1
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}:1: a .json dataset must be a list of records")
        lines = _item_lines(text, len(data))
        return list(zip(lines, data, strict=True))
    out: list[tuple[int, Any | Exception]] = []
    # JSONL lines end at "\n" only: splitlines() would also split inside strings holding U+2028, U+0085, ...
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            out.append((i, json.loads(line)))
        except json.JSONDecodeError as e:
            out.append((i, e))
    return out


def _item_lines(text: str, n: int) -> list[int]:
    """Line where each top-level array item starts (best effort: falls back to 1-based item index)."""
    decoder, lines, pos = json.JSONDecoder(), [], text.index("[") + 1
    try:
        for _ in range(n):
            while text[pos] in " \t\r\n,":
                pos += 1
            lines.append(text.count("\n", 0, pos) + 1)
            _, pos = decoder.raw_decode(text, pos)
        return lines
    except (ValueError, IndexError):
        return list(range(1, n + 1))


def read_records(ref: str, fmt: str = "auto") -> LoadedRecords:
    path = resolve_path(ref)
    out = LoadedRecords()
    for line, raw in iter_raw(path):
        if isinstance(raw, Exception):
            out.rejects.append(Reject(str(path), line, f"invalid JSON: {raw.msg}"))
            continue
        try:
            rec = to_sft_record(raw, fmt)
        except RecordError as e:
            out.rejects.append(Reject(str(path), line, str(e)))
            continue
        rec["meta"].update(source=str(path), line=line)
        out.records.append(rec)
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


def write_rejects(rejects: list[Reject], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rejects:
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
