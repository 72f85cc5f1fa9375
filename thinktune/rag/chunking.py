"""Documents → chunks: paragraphs (blank lines), packed greedily up to a character budget; a paragraph over the
budget is cut at sentence ends, a sentence over it at spaces. Consecutive chunks of a document share their last
units up to `overlap` characters, so a fact cut by a chunk boundary is whole in one of them.

Characters, not tokens: the embedding model reads at most 256 word pieces (about 1,000 characters of English), and
a character budget does not depend on any tokenizer. Offsets point into the document's text: `text[start:end]` is
the chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from thinktune.rag.documents import Document

PARAGRAPH = re.compile(r"\n\s*\n")
SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


@dataclass(frozen=True)
class Chunk:
    id: str  # the document id when the document is one chunk, else `doc#n` (n from 1)
    doc: str
    text: str
    start: int
    end: int

    def to_json(self) -> dict:
        return {"id": self.id, "doc": self.doc, "text": self.text, "start": self.start, "end": self.end}


def _spans(text: str, pattern: re.Pattern, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of the non-blank pieces of text[start:end] between matches of `pattern`, whitespace trimmed."""
    out, pos = [], start
    for m in pattern.finditer(text, start, end):
        out.append((pos, m.start()))
        pos = m.end()
    out.append((pos, end))
    trimmed = []
    for a, b in out:
        piece = text[a:b]
        if piece.strip():
            a += len(piece) - len(piece.lstrip())
            b -= len(piece) - len(piece.rstrip())
            trimmed.append((a, b))
    return trimmed


def _words(text: str, start: int, end: int, budget: int) -> list[tuple[int, int]]:
    """A sentence longer than the budget, cut at the last space before each budget (or hard at the budget)."""
    out = []
    while end - start > budget:
        cut = text.rfind(" ", start + 1, start + budget)
        cut = cut if cut > start else start + budget
        out.append((start, cut))
        start = cut + 1 if text[cut : cut + 1] == " " else cut
    return [*out, (start, end)]


def units(text: str, budget: int) -> list[tuple[int, int]]:
    """Paragraphs, else sentences, else word runs: the pieces chunks are packed from, each within the budget."""
    out = []
    for a, b in _spans(text, PARAGRAPH, 0, len(text)):
        if b - a <= budget:
            out.append((a, b))
            continue
        for sa, sb in _spans(text, SENTENCE_END, a, b):
            out += [(sa, sb)] if sb - sa <= budget else _words(text, sa, sb, budget)
    return out


def chunk_document(doc: Document, max_chars: int, overlap: int) -> list[Chunk]:
    pieces = units(doc.text, max_chars)
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(pieces):
        j = i + 1
        while j < len(pieces) and pieces[j][1] - pieces[i][0] <= max_chars:
            j += 1
        spans.append((pieces[i][0], pieces[j - 1][1]))
        if j == len(pieces):
            break
        # the next chunk starts with the last units of this one that fit in `overlap` (never all of them), as long
        # as the next new unit still fits beside them
        back = j
        while (
            back - 1 > i
            and pieces[j - 1][1] - pieces[back - 1][0] <= overlap
            and pieces[j][1] - pieces[back - 1][0] <= max_chars
        ):
            back -= 1
        i = back
    if len(spans) == 1:
        ((a, b),) = spans
        return [Chunk(doc.id, doc.id, doc.text[a:b], a, b)]
    return [Chunk(f"{doc.id}#{n}", doc.id, doc.text[a:b], a, b) for n, (a, b) in enumerate(spans, start=1)]


def chunk_documents(docs: list[Document], max_chars: int, overlap: int) -> list[Chunk]:
    return [c for doc in docs for c in chunk_document(doc, max_chars, overlap)]
