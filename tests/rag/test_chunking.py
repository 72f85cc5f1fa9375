"""Chunking: paragraphs packed to a character budget, long paragraphs cut at sentences, overlap, offsets."""

from __future__ import annotations

import pytest

from thinktune.rag.chunking import chunk_document, units
from thinktune.rag.documents import Document

TEXT = (
    "Para one is short.\n\nPara two has sentences. It goes on. And on and on for a while. Yes it does.\n\n"
    + ("word " * 30).strip()
)


def test_one_small_document_is_one_chunk_named_by_the_document():
    [c] = chunk_document(Document("C07", "Short clause.", "x"), 800, 100)
    assert (c.id, c.doc, c.text, c.start, c.end) == ("C07", "C07", "Short clause.", 0, 13)


@pytest.mark.parametrize(("budget", "overlap"), [(60, 0), (60, 25), (40, 15), (200, 50)])
def test_chunks_are_slices_within_budget_and_cover_the_text(budget, overlap):
    chunks = chunk_document(Document("d", TEXT, "x"), budget, overlap)
    assert all(c.text == TEXT[c.start : c.end] for c in chunks)
    assert all(len(c.text) <= budget for c in chunks)
    assert [c.id for c in chunks] == [f"d#{n}" for n in range(1, len(chunks) + 1)]
    covered = set()
    for c in chunks:
        covered |= set(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(TEXT) if not ch.isspace())


def test_overlap_repeats_whole_sentences_and_no_chunk_is_only_overlap():
    chunks = chunk_document(Document("d", TEXT, "x"), 60, 25)
    assert chunks[1].text.startswith("It goes on.")  # the last sentence of chunk 1, repeated
    assert chunks[0].text.endswith("It goes on.")
    without = chunk_document(Document("d", TEXT, "x"), 60, 0)
    assert all(a.end <= b.start for a, b in zip(without, without[1:], strict=False))
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.end > a.end  # every chunk brings new text


def test_units_cut_a_long_sentence_at_spaces():
    text = "alpha " * 40
    pieces = units(text, 50)
    assert all(b - a <= 50 for a, b in pieces)
    assert " ".join(text[a:b] for a, b in pieces).split() == text.split()
