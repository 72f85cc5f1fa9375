"""A retrieval index on disk, and search over it: BM25 (bm25s), dense (all-MiniLM-L6-v2) and their hybrid.

    INDEX/
      manifest.json   what built it: document and chunk counts, chunk settings, retrievers, the embedding model
                      (name, package, weights fingerprint, dimension), the BM25 settings, a digest of the chunks
      chunks.jsonl    one chunk per line: id, doc, text, start, end (offsets into the document's text)
      vectors.npy     dense: float32 [chunks, 384], unit length, in chunks.jsonl order
      bm25/           bm25s' saved state (sparse score matrix, vocabulary, parameters)

Dense search is exact: one matrix product of the query with every chunk vector. At the scale this index is for
(thousands to a few hundred thousand chunks: 384 floats each, ~1.5 KB) that is a few milliseconds on a CPU and
always finds the true nearest chunks; an approximate index (FAISS IVF/HNSW, hnswlib) pays off only beyond that, at
the price of a recall below 1, a build step and another native dependency. numpy's `.npy` is the storage.

Hybrid ranks by reciprocal-rank fusion (Cormack, Clarke & Büttcher 2009): score = Σ 1 / (60 + rank) over the two
rankings, so neither retriever's score scale matters.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thinktune.errors import ConfigError, DataError
from thinktune.rag.chunking import Chunk, chunk_documents
from thinktune.rag.documents import read_documents
from thinktune.rag.embedding import EMBEDDING_MODEL, EMBEDDING_PACKAGE, embed, embedding_fingerprint

MANIFEST, CHUNKS, VECTORS, BM25_DIR = "manifest.json", "chunks.jsonl", "vectors.npy", "bm25"
RETRIEVERS = ("hybrid", "bm25", "dense")
RRF_K = 60  # Cormack et al. 2009
BM25_SETTINGS = {"library": "bm25s", "method": "lucene", "k1": 1.5, "b": 0.75, "stopwords": "en", "stemmer": "english"}
FORMAT = 1


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float

    def source(self) -> dict[str, Any]:
        """What a response tells a client about a passage it used."""
        return {"id": self.chunk.id, "doc": self.chunk.doc, "score": round(self.score, 6), "text": self.chunk.text}


def _tokenize(texts: list[str]) -> list[list[str]]:
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer(BM25_SETTINGS["stemmer"])
    return bm25s.tokenize(
        texts, stopwords=BM25_SETTINGS["stopwords"], stemmer=stemmer, return_ids=False, show_progress=False
    )


def build_index(
    docs_ref: str, out: Path, max_chars: int = 800, overlap: int = 120, retriever: str = "hybrid"
) -> dict[str, Any]:
    """Read, chunk and index the documents of `docs_ref` into `out` (written beside it, then moved in place, so a
    failed build leaves any earlier index whole); returns the manifest."""
    if retriever not in RETRIEVERS:
        raise ConfigError(f"--retriever {retriever}: choose one of {', '.join(RETRIEVERS)}")
    if not 0 <= overlap < max_chars:
        raise ConfigError(f"--overlap {overlap}: must be at least 0 and below --max-chars {max_chars}")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise DataError(f"{out}: exists and is not a rag index; choose an empty or new folder")
    docs = read_documents(docs_ref)
    chunks = chunk_documents(docs, max_chars, overlap)
    kinds = ["bm25", "dense"] if retriever == "hybrid" else [retriever]
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        lines = "".join(json.dumps(c.to_json(), ensure_ascii=False) + "\n" for c in chunks)
        (work / CHUNKS).write_text(lines, encoding="utf-8")
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "documents": len(docs),
            "chunks": len(chunks),
            "sources": docs_ref,
            "chunking": {"max_chars": max_chars, "overlap": overlap, "unit": "characters"},
            "retrievers": kinds,
            "chunks_sha256": hashlib.sha256(lines.encode()).hexdigest(),
        }
        if "dense" in kinds:
            vectors = embed([c.text for c in chunks]).numpy().astype(np.float32)
            np.save(work / VECTORS, vectors)
            manifest["embedding"] = {
                "model": EMBEDDING_MODEL,
                "package": EMBEDDING_PACKAGE,
                "fingerprint": embedding_fingerprint(),
                "dim": int(vectors.shape[1]),
            }
        if "bm25" in kinds:
            import bm25s

            bm25 = bm25s.BM25(method=BM25_SETTINGS["method"], k1=BM25_SETTINGS["k1"], b=BM25_SETTINGS["b"])
            bm25.index(_tokenize([c.text for c in chunks]), show_progress=False)
            bm25.save(str(work / BM25_DIR))
            manifest["bm25"] = BM25_SETTINGS
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def index_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def manifest_digest(path: str | Path) -> str:
    """What identifies an index's contents (for the data cache): its manifest, which holds the chunks' digest."""
    return hashlib.sha256(_manifest_path(Path(path)).read_bytes()).hexdigest()


def _manifest_path(path: Path) -> Path:
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise DataError(f"{path}: no rag index here (build one: thinktune rag index DOCS_DIR -o {path})")
    return manifest


class Index:
    """An index opened for search; refuses one built with another embedding model than this machine's."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest = json.loads(_manifest_path(self.path).read_text())
        if self.manifest.get("format") != FORMAT:
            raise DataError(f"{self.path}: index format {self.manifest.get('format')} (this thinktune reads {FORMAT})")
        self.kinds: list[str] = self.manifest["retrievers"]
        for name in (
            [CHUNKS] + ([VECTORS] if "dense" in self.kinds else []) + ([BM25_DIR] if "bm25" in self.kinds else [])
        ):
            if not (self.path / name).exists():
                raise DataError(f"{self.path}: {name} is missing (a partly copied index? rebuild it)")
        rows = (self.path / CHUNKS).read_text(encoding="utf-8").splitlines()
        self.chunks = [Chunk(**json.loads(line)) for line in rows if line.strip()]
        self.by_id = {c.id: i for i, c in enumerate(self.chunks)}
        self.by_doc: dict[str, list[int]] = {}
        for i, c in enumerate(self.chunks):
            self.by_doc.setdefault(c.doc, []).append(i)
        self.vectors = None
        if "dense" in self.kinds:
            self._check_embedding()
            self.vectors = np.load(self.path / VECTORS)
        self.bm25 = None
        if "bm25" in self.kinds:
            import bm25s

            self.bm25 = bm25s.BM25.load(str(self.path / BM25_DIR))
        self._lock = threading.Lock()  # fast tokenizers (embedding, stemmer) are not thread-safe (serve)

    def _check_embedding(self) -> None:
        built = self.manifest.get("embedding", {})
        here = embedding_fingerprint()
        if built.get("fingerprint") != here or built.get("model") != EMBEDDING_MODEL:
            raise DataError(
                f"{self.path}: built with embedding model {built.get('model')} (weights {built.get('fingerprint')}); "
                f"this machine has {EMBEDDING_MODEL} (weights {here}) from {EMBEDDING_PACKAGE}: rebuild the index "
                "with thinktune rag index"
            )

    @property
    def default_retriever(self) -> str:
        return "hybrid" if len(self.kinds) == 2 else self.kinds[0]

    def check_retriever(self, retriever: str) -> str:
        if retriever not in RETRIEVERS:
            raise ConfigError(f"retriever {retriever!r}: choose one of {', '.join(RETRIEVERS)}")
        needs = ["bm25", "dense"] if retriever == "hybrid" else [retriever]
        missing = [k for k in needs if k not in self.kinds]
        if missing:
            raise ConfigError(
                f"retriever {retriever!r}: {self.path} was built with {' + '.join(self.kinds)} only "
                f"(no {' / '.join(missing)}); rebuild it with --retriever hybrid"
            )
        return retriever

    def rankings(self, queries: list[str], retriever: str | None = None) -> list[list[tuple[int, float]]]:
        """Per query, (chunk index, score) best first: every chunk for dense, chunks sharing a term for BM25,
        the union for hybrid."""
        retriever = self.check_retriever(retriever or self.default_retriever)
        with self._lock:
            dense = self._dense(queries) if retriever in ("dense", "hybrid") else None
            sparse = self._bm25(queries) if retriever in ("bm25", "hybrid") else None
        if retriever == "dense":
            return dense
        if retriever == "bm25":
            return sparse
        return [_fuse([d, s]) for d, s in zip(dense, sparse, strict=True)]

    def search(self, query: str, k: int, retriever: str | None = None) -> list[Hit]:
        return self.search_many([query], k, retriever)[0]

    def search_many(self, queries: list[str], k: int, retriever: str | None = None) -> list[list[Hit]]:
        return [[Hit(self.chunks[i], s) for i, s in r[:k]] for r in self.rankings(queries, retriever)]

    def _dense(self, queries: list[str]) -> list[list[tuple[int, float]]]:
        q = embed(queries).numpy()
        scores = q @ self.vectors.T
        return [[(int(i), float(row[i])) for i in np.argsort(-row, kind="stable")] for row in scores]

    def _bm25(self, queries: list[str]) -> list[list[tuple[int, float]]]:
        out = []
        for tokens in _tokenize(queries):
            known = [t for t in tokens if t in self.bm25.vocab_dict]
            scores = self.bm25.get_scores(known) if known else np.zeros(len(self.chunks))
            order = np.argsort(-scores, kind="stable")
            out.append([(int(i), float(scores[i])) for i in order if scores[i] > 0])
        return out

    def chunks_of(self, gold: str) -> list[int]:
        """Chunks a gold id names: the chunk with that id, else every chunk of the document with that id."""
        if gold in self.by_id:
            return [self.by_id[gold]]
        return list(self.by_doc.get(gold, []))


def _fuse(rankings: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (i, _) in enumerate(ranking, start=1):
            fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(fused.items(), key=lambda x: (-x[1], x[0]))


def matches(chunk: Chunk, gold: str) -> bool:
    """A gold id names a chunk (its id) or a whole document (every chunk of it)."""
    return chunk.id == gold or chunk.doc == gold


def open_index(path: str | Path) -> Index:
    return Index(path)
