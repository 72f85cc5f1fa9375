"""Knowledge graphs for `thinktune data synth`: triples read from files, and the indexes the question generator walks.

    thinktune data synth graph.csv -o synth/           # head,relation,tail rows, or a table (one row per entity)

A file is read as triples when its columns (CSV header, or the first JSON row's keys) include `head`, `relation` and
`tail`; otherwise it is a table: one row per entity, the key column (`key`, default the first column) names the
entity and every other non-empty cell becomes the triple (key, column, value). Unusable rows become `Reject`s with
file, line and reason; nothing is dropped silently.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from thinktune.data.reading import Reject, iter_raw, raw_error_reason, resolve_path
from thinktune.errors import DataError

TRIPLE_FIELDS = ("head", "relation", "tail")


class Triple(NamedTuple):
    head: str
    relation: str
    tail: str


@dataclass
class Graph:
    """Triples plus the lookups a walk needs: out[(head, relation)] → tails, into[(relation, tail)] → heads.

    `subjects` names what the heads of a relation are (a table's key column: `company`), for question wording."""

    triples: list[Triple]
    subjects: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.into: dict[tuple[str, str], list[str]] = defaultdict(list)
        for h, r, t in self.triples:
            self.out[(h, r)].append(t)
            self.into[(r, t)].append(h)
        self.relations = sorted({t.relation for t in self.triples})
        self.entities = sorted({t.head for t in self.triples} | {t.tail for t in self.triples})
        self.heads_of: dict[str, list[str]] = {
            r: sorted({t.head for t in self.triples if t.relation == r}) for r in self.relations
        }

    def tails(self, head: str, relation: str) -> list[str]:
        return self.out.get((head, relation), [])

    def heads(self, relation: str, tail: str) -> list[str]:
        return self.into.get((relation, tail), [])


@dataclass
class LoadedGraph:
    graph: Graph
    rejects: list[Reject]
    rows: int  # rows read, usable or not


def _cell(value: Any, name: str) -> str:
    """A cell as entity text; numbers become their text (1987 → '1987'), lists and objects are refused."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"field '{name}' must be text or a number, got {type(value).__name__}")
    text = str(value).strip()
    if "\n" in text:
        raise ValueError(f"field '{name}' spans several lines")
    return text


def _is_triples(first: Any) -> bool:
    return isinstance(first, dict) and all(k in first for k in TRIPLE_FIELDS)


def _row_triples(raw: Any, as_triples: bool, key: str | None) -> list[Triple]:
    """The triples of one parsed row; ValueError with the reason when the row is unusable."""
    if not isinstance(raw, dict):
        raise ValueError(f"row must be a JSON object, got {type(raw).__name__}")
    if as_triples:
        missing = [k for k in TRIPLE_FIELDS if raw.get(k) in (None, "")]
        if missing:
            raise ValueError(f"empty or missing field '{missing[0]}'")
        h, r, t = (_cell(raw[k], k) for k in TRIPLE_FIELDS)
        if not (h and r and t):
            raise ValueError("head, relation and tail must be non-blank")
        return [Triple(h, r, t)]
    if key not in raw or raw[key] in (None, ""):
        raise ValueError(f"empty or missing key field '{key}'")
    entity = _cell(raw[key], key)
    if not entity:
        raise ValueError(f"key field '{key}' is blank")
    out = []
    for column, value in raw.items():
        if column == key or value is None:
            continue
        text = _cell(value, column)
        if text:  # an empty cell is a fact not stated, not an error
            out.append(Triple(entity, column.strip(), text))
    return out


def read_graph(refs: list[str], key: str | None = None) -> LoadedGraph:
    """Triples from files (CSV/TSV/JSONL/JSON or bundled:NAME). A repeated triple, or a table row whose entity an
    earlier row already described, is a reject naming the first line."""
    triples: list[Triple] = []
    rejects: list[Reject] = []
    subjects: dict[str, str] = {}
    seen: dict[Triple, str] = {}
    rows = 0
    for ref in refs:
        path = resolve_path(ref)
        if Path(path).is_dir():
            raise DataError(f"{ref}: a graph is a file (CSV, TSV, JSONL or JSON), not a folder")
        items = list(iter_raw(path))
        first = next((raw for _, raw in items if not isinstance(raw, Exception)), None)
        as_triples = _is_triples(first) and key is None
        table_key = None if as_triples else (key or (next(iter(first)) if isinstance(first, dict) else None))
        if not as_triples and isinstance(first, dict) and table_key not in first:
            raise DataError(f"{ref}: --key {table_key}: no such column (columns: {', '.join(first)})")
        entities: dict[str, int] = {}
        for line, raw in items:
            rows += 1
            if isinstance(raw, Exception):
                rejects.append(Reject(ref, line, raw_error_reason(raw)))
                continue
            try:
                found = _row_triples(raw, as_triples, table_key)
            except ValueError as e:
                rejects.append(Reject(ref, line, str(e)))
                continue
            if not as_triples:
                entity = str(raw[table_key]).strip()
                if entity in entities:
                    rejects.append(Reject(ref, line, f"entity {entity!r} already described at line {entities[entity]}"))
                    continue
                entities[entity] = line
                if table_key.lower() not in ("name", "id", "key", "entity"):
                    subjects.update({t.relation: table_key.replace("_", " ") for t in found})
            if not found:
                rejects.append(Reject(ref, line, "no facts: every cell besides the key is empty"))
                continue
            repeated = next((t for t in found if t in seen), None)
            if repeated is not None:
                rejects.append(Reject(ref, line, f"repeats the triple {tuple(repeated)} of {seen[repeated]}"))
                continue
            for t in found:
                seen[t] = f"{ref}:{line}"
                triples.append(t)
    loaded = LoadedGraph(Graph(triples, subjects), rejects, rows)
    if not triples:
        first_reject = f"; first: {rejects[0].file}:{rejects[0].line}: {rejects[0].reason}" if rejects else ""
        raise DataError(f"{', '.join(refs)}: no usable triples ({len(rejects)} rows rejected{first_reject})")
    return loaded
