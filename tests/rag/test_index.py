"""The index on disk, search, recall and the one-line refusals (documents, index, embedding model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thinktune.errors import DataError
from thinktune.rag.documents import read_documents
from thinktune.rag.index import build_index, index_bytes, open_index
from thinktune.rag.prompt import cited_ids, with_passages
from thinktune.rag.scoring import citation_coverage, recall, recall_table


def test_index_folder_holds_chunks_vectors_bm25_and_manifest(contracts_index):
    names = {p.name for p in contracts_index.iterdir()}
    assert {"manifest.json", "chunks.jsonl", "vectors.npy", "bm25"} <= names
    manifest = json.loads((contracts_index / "manifest.json").read_text())
    assert manifest["documents"] == manifest["chunks"] == 32
    assert manifest["embedding"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert manifest["chunking"] == {"max_chars": 800, "overlap": 120, "unit": "characters"}
    first = json.loads((contracts_index / "chunks.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "doc", "text", "start", "end"} and first["id"] == "C01"  # JSONL ids kept
    assert 20_000 < index_bytes(contracts_index) < 500_000


@pytest.mark.parametrize(
    ("query", "gold"),
    [("Which country's law governs the agreement?", "C29"), ("personal data breach notification hours", "C17")],
)
@pytest.mark.parametrize("retriever", ["bm25", "dense", "hybrid"])
def test_each_retriever_finds_an_easy_clause(contracts_index, retriever, query, gold):
    hits = open_index(contracts_index).search(query, 5, retriever)
    assert gold in [h.chunk.id for h in hits]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_recall_table_over_the_bundled_questions(contracts_index):
    from thinktune.data.reading import read_records
    from thinktune.rag.prompt import question_turn

    recs = read_records("bundled:contracts/test").records
    pairs = [(question_turn(r["messages"])[1], r["meta"]["gold_ids"]) for r in recs]
    table = recall_table(open_index(contracts_index), pairs, (1, 5))
    assert set(table) == {"hybrid", "bm25", "dense"}
    for row in table.values():
        assert 0.5 <= row["recall@1"] <= row["recall@5"] <= 1.0


@pytest.mark.parametrize(
    ("gold", "retrieved", "expected"),
    [(["C07"], ["C01", "C07"], 1.0), (["C07"], ["C01"], 0.0), (["C07", "C12"], ["C12#2"], 0.5), ([], ["C1"], 0.0)],
)
def test_recall(gold, retrieved, expected):
    from thinktune.rag.chunking import Chunk

    chunks = [Chunk(i, i.split("#")[0], "t", 0, 1) for i in retrieved]
    assert recall(gold, chunks) == expected


@pytest.mark.parametrize(
    ("answer", "gold", "coverage"),
    [
        ("Per [C07], 120 days.", ["C07"], 1.0),
        ("Per [C07, C12] and [C13]", ["C12", "C13"], 1.0),
        ("See [C07#2].", ["C07"], 1.0),
        ("See C07.", ["C07"], 0.0),
        ("[C08]", ["C07", "C08"], 0.5),
    ],
)
def test_citation_coverage(answer, gold, coverage):
    assert citation_coverage(gold, cited_ids(answer)) == coverage


def test_passages_go_into_the_last_user_message(contracts_index):
    ix = open_index(contracts_index)
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "Q?"},
    ]
    out = with_passages(msgs, [ix.chunks[6]])
    assert out[:2] == msgs[:2] and msgs[2]["content"] == "Q?"
    assert out[2]["content"].startswith("Passages (cite")
    assert "\n[C07] Termination for Convenience." in out[2]["content"]
    assert out[2]["content"].endswith("\n\nQuestion: Q?")


def test_document_refusals(tmp_path):
    with pytest.raises(DataError, match="no such documents folder"):
        read_documents(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no documents"):
        read_documents(str(tmp_path / "empty"))
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.md").write_text("# A\n\ntext")
    (tmp_path / "mixed" / "b.docx").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"b\.docx: unknown document type '\.docx'"):
        read_documents(str(tmp_path / "mixed"))
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "d.jsonl").write_text('{"id": "a", "text": "x"}\n{"id": "b"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'text' missing"):
        read_documents(str(tmp_path / "j"))
    (tmp_path / "j" / "d.jsonl").write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: document id 'a' is also the id of .*d\.jsonl:1"):
        read_documents(str(tmp_path / "j"))


def test_txt_md_and_pdf_documents(tmp_path):
    from pypdf import PdfWriter

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "leave.md").write_text("# Leave\n\nStaff get 25 days of paid leave.")
    (tmp_path / "notes.txt").write_text("Expenses need receipts.")
    writer = PdfWriter()
    writer.add_blank_page(72, 72)
    with open(tmp_path / "blank.pdf", "wb") as f:
        writer.write(f)
    with pytest.raises(DataError, match=r"blank\.pdf: no text in this document"):
        read_documents(str(tmp_path))
    (tmp_path / "blank.pdf").unlink()
    docs = read_documents(str(tmp_path))
    assert [d.id for d in docs] == ["notes", "sub/leave"]


def test_bm25_only_index_and_retriever_refusal(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Staff get 25 days of paid leave.")
    (tmp_path / "docs" / "b.txt").write_text("Expenses need receipts.")
    manifest = build_index(str(tmp_path / "docs"), tmp_path / "ix", retriever="bm25")
    assert manifest["retrievers"] == ["bm25"] and "embedding" not in manifest
    ix = open_index(tmp_path / "ix")
    assert [h.chunk.id for h in ix.search("receipts for expenses", 2)] == ["b"]
    from thinktune.errors import ConfigError

    with pytest.raises(ConfigError, match="built with bm25 only"):
        ix.search("x", 1, "dense")


def run_cli(*args, cwd):
    """The CLI of this checkout (PYTHONPATH), in a subprocess, from another folder."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    return subprocess.run(
        [sys.executable, "-m", "thinktune", *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def one_line_error(r, *fragments):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    [line] = r.stderr.strip().splitlines()
    for f in fragments:
        assert f in line, line
    return line


def test_cli_index_search_eval_and_refusals(tmp_path, contracts_index):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "policy.jsonl").write_text(
        '{"id": "P1", "text": "Staff get 25 days of paid leave each year."}\n'
        '{"id": "P2", "text": "Travel expenses are refunded against receipts within 30 days."}\n'
    )
    r = run_cli("rag", "index", "docs", "-o", "ix", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 documents → 2 chunks, bm25 + dense" in r.stdout and "KiB on disk" in r.stdout
    r = run_cli("rag", "search", "ix", "how many holidays do employees have", "-k", "1", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("1. P1 ("), r.stdout
    r = run_cli("rag", "eval", str(contracts_index), "bundled:contracts/test", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "10 questions, 32 chunks" in r.stdout and "recall@5" in r.stdout and "hybrid" in r.stdout

    one_line_error(run_cli("rag", "search", "missing", "q", cwd=tmp_path), "missing: no rag index here")
    (tmp_path / "empty").mkdir()
    one_line_error(run_cli("rag", "index", "empty", "-o", "ix2", cwd=tmp_path), "empty: no documents")
    (tmp_path / "docs" / "x.docx").write_bytes(b"PK")
    one_line_error(run_cli("rag", "index", "docs", "-o", "ix2", cwd=tmp_path), "x.docx: unknown document type")
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    manifest["embedding"]["fingerprint"] = "0123456789abcdef"  # as if built with other weights
    (tmp_path / "ix" / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(run_cli("rag", "search", "ix", "q", cwd=tmp_path), "built with embedding model", "rebuild the index")
