"""Documents of a folder to index: .txt and .md files (one document each, named by their path), .jsonl files (one
document per line, `id` and `text` fields, the ids kept) and .pdf files (their text layer, through pypdf).

`bundled:contracts` names the invented contract clauses shipped with thinktune (thinktune/rag/bundled/contracts).
Anything else in the folder is refused in one line naming the file, so no document is left out unseen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from thinktune.errors import DataError

SUFFIXES = (".txt", ".md", ".jsonl", ".pdf")
BUNDLED_PREFIX = "bundled:"


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    source: str  # file, or file:line for a JSONL document


def docs_path(ref: str) -> Path:
    """A folder (or one file) of documents; `bundled:NAME` → the set shipped in the package."""
    if ref.startswith(BUNDLED_PREFIX):
        name = ref[len(BUNDLED_PREFIX) :]
        path = Path(str(resources.files("thinktune.rag").joinpath("bundled", name)))
        if not name or not path.is_dir():
            shipped = sorted(p.name for p in Path(str(resources.files("thinktune.rag").joinpath("bundled"))).iterdir())
            raise DataError(f"{ref}: no such bundled document set (available: {', '.join(shipped)})")
        return path
    path = Path(ref)
    if not path.exists():
        raise DataError(f"{ref}: no such documents folder")
    return path


def read_documents(ref: str) -> list[Document]:
    """Every document under `ref`, files in sorted order; refuses an empty folder, unknown file types, JSONL lines
    without `id`/`text`, duplicate ids and documents without text."""
    root = docs_path(ref)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root))
    if not files:
        raise DataError(f"{ref}: no documents (the folder is empty)")
    docs: list[Document] = []
    seen: dict[str, str] = {}
    for path in files:
        name = path.name if path == root else path.relative_to(root).as_posix()
        for doc in _read_file(path, name):
            if doc.id in seen:
                raise DataError(f"{doc.source}: document id {doc.id!r} is also the id of {seen[doc.id]}")
            seen[doc.id] = doc.source
            docs.append(doc)
    return docs


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _read_file(path: Path, name: str) -> list[Document]:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            f"{path}: unknown document type {suffix or '(no suffix)'!r}; rag index reads {', '.join(SUFFIXES)}"
        )
    if suffix == ".jsonl":
        return _read_jsonl(path)
    text = _pdf_text(path) if suffix == ".pdf" else path.read_text(encoding="utf-8", errors="strict")
    if not text.strip():
        raise DataError(f"{path}: no text in this document")
    return [Document(name.rsplit(".", 1)[0], text, str(path))]


def _read_jsonl(path: Path) -> list[Document]:
    docs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: a document line must be a JSON object with 'id' and 'text'")
        for key in ("id", "text"):
            if key not in row:
                raise DataError(f"{where}: field '{key}' missing (a document line needs 'id' and 'text')")
        if not isinstance(row["id"], (str, int)) or not str(row["id"]).strip():
            raise DataError(f"{where}: field 'id' must be a non-empty string or integer")
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise DataError(f"{where}: field 'text' must be non-empty text")
        docs.append(Document(str(row["id"]).strip(), row["text"], where))
    if not docs:
        raise DataError(f"{path}: no documents in this file")
    return docs


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        pages = [page.extract_text() or "" for page in PdfReader(path).pages]
    except (PdfReadError, OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable PDF ({e})") from None
    return "\n\n".join(p.strip() for p in pages if p.strip())
