"""The cleaning stage: quality filters, PII anonymisation, exact and near-duplicate removal.

Rules run per record in this order, streaming (only the dedup index grows with the data):
  1. quality — short_answer, too_long, repetition, broken_encoding (the first one that applies removes the record)
  2. pii — replaces personal data in place (counts per kind; the record stays)
  3. exact_duplicate, near_duplicate — the first occurrence stays, later ones go
Every removed record becomes a Reject(file, line, "rule: detail", rule=rule).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from thinktune.data.dedup import WORD, NearDuplicateIndex, exact_key
from thinktune.data.pii import anonymise
from thinktune.data.reading import Reject
from thinktune.data.records import answer_text, full_text, map_texts, prompt_text
from thinktune.data.spec import CleaningConfig

RULES = ("short_answer", "too_long", "repetition", "broken_encoding", "exact_duplicate", "near_duplicate")
REPEAT_NGRAM = 3
MIN_NGRAMS_TO_JUDGE = 20  # shorter answers are too short to call repetitive
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# UTF-8 bytes decoded as cp1252/latin-1: a lead byte Â..ô followed by continuation-byte look-alikes ("Ã©" for "é")
MOJIBAKE = re.compile(
    "[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
    "\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]{1,3}"
)


def repeated_ngram_ratio(text: str, n: int = REPEAT_NGRAM) -> float:
    """Share of word n-grams that repeat an earlier one (0 = all distinct; near 1 = a degenerate loop)."""
    words = WORD.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < MIN_NGRAMS_TO_JUDGE:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def encoding_problem(text: str) -> str | None:
    if "\ufffd" in text:
        return "replacement character U+FFFD (text was decoded with errors)"
    m = CONTROL.search(text)
    if m:
        return f"control character {m.group(0)!r}"
    for m in MOJIBAKE.finditer(text):
        for enc in ("cp1252", "latin-1"):
            try:
                fixed = m.group(0).encode(enc).decode("utf-8")
            except (UnicodeEncodeError, UnicodeDecodeError):
                continue
            return f"mojibake {m.group(0)!r} (UTF-8 read as {enc}; meant {fixed!r})"
    return None


def quality_problem(rec: dict[str, Any], cfg: CleaningConfig) -> tuple[str, str] | None:
    """(rule, detail) of the first quality rule the record breaks, or None."""
    answer = answer_text(rec)
    if len(answer.strip()) < cfg.min_answer_chars:
        n = len(answer.strip())
        return "short_answer", f"answer has {n} characters < cleaning.min_answer_chars={cfg.min_answer_chars}"
    text = full_text(rec)
    if cfg.max_chars is not None and len(text) > cfg.max_chars:
        return "too_long", f"{len(text)} characters > cleaning.max_chars={cfg.max_chars}"
    if cfg.max_repeated_ngram_ratio is not None:
        ratio = repeated_ngram_ratio(answer)
        if ratio > cfg.max_repeated_ngram_ratio:
            limit = cfg.max_repeated_ngram_ratio
            return "repetition", f"{ratio:.0%} of the answer's word 3-grams repeat (> {limit:.0%})"
    if cfg.reject_broken_encoding:
        problem = encoding_problem(text)
        if problem:
            return "broken_encoding", problem
    return None


@dataclass
class CleaningReport:
    seen: int = 0
    kept: int = 0
    removed: Counter = field(default_factory=Counter)  # rule → records removed
    pii: Counter = field(default_factory=Counter)  # kind → replacements in the kept records

    def to_json(self) -> dict[str, Any]:
        return {"seen": self.seen, "kept": self.kept, "removed": dict(self.removed), "pii": dict(self.pii)}


class Cleaner:
    """Applies a CleaningConfig record by record; holds the dedup state and the report."""

    def __init__(self, cfg: CleaningConfig) -> None:
        self.cfg = cfg
        self.report = CleaningReport()
        self._exact: dict[bytes, str] = {}
        self._near = NearDuplicateIndex(cfg.near_dedup_threshold) if cfg.near_dedup else None

    def __call__(self, rec: dict[str, Any]) -> dict[str, Any] | Reject:
        self.report.seen += 1
        where = f"{rec['meta'].get('source')}:{rec['meta'].get('line')}"
        problem = quality_problem(rec, self.cfg)
        if problem:
            return self._reject(rec, *problem)
        pii: Counter = Counter()
        if self.cfg.pii:
            rec = self._anonymise(rec, pii)
        text = prompt_text(rec) if self.cfg.dedup_on == "prompt" else full_text(rec)
        if self.cfg.exact_dedup:
            key = exact_key(text)
            if key in self._exact:
                return self._reject(rec, "exact_duplicate", f"same text as {self._exact[key]}")
            self._exact[key] = where
        if self._near is not None:
            found = self._near.find_or_add(where, text)
            if found:
                return self._reject(rec, "near_duplicate", f"similar to {found[0]} (Jaccard ≈ {found[1]:.2f})")
        self.report.kept += 1
        self.report.pii.update(pii)  # counted for kept records only
        return rec

    def _anonymise(self, rec: dict[str, Any], counts: Counter) -> dict[str, Any]:
        def fn(text: str) -> str:
            out, found = anonymise(text, self.cfg.pii_kinds, self.cfg.pii_names, self.cfg.pii_name_heuristic)
            counts.update(found)
            return out

        return map_texts(rec, fn)

    def _reject(self, rec: dict[str, Any], rule: str, detail: str) -> Reject:
        self.report.removed[rule] += 1
        return Reject(str(rec["meta"].get("source")), int(rec["meta"].get("line") or 0), f"{rule}: {detail}", rule)

    def stream(self, items: Iterable[dict[str, Any] | Reject]) -> Iterator[dict[str, Any] | Reject]:
        """Clean a stream of records; rejects from reading pass through untouched."""
        for item in items:
            yield item if isinstance(item, Reject) else self(item)


def clean_records(
    records: Iterable[dict[str, Any]], cfg: CleaningConfig
) -> tuple[list[dict[str, Any]], list[Reject], CleaningReport]:
    cleaner, kept, rejects = Cleaner(cfg), [], []
    for item in cleaner.stream(records):
        (rejects if isinstance(item, Reject) else kept).append(item)
    return kept, rejects, cleaner.report
