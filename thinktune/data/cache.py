"""Where tokenised datasets are cached, and the content hash that names them.

A cache entry is a `datasets` directory (Arrow files, memory-mapped on load) under
`<THINKTUNE_HOME>/data/<key>`, written to a temporary folder first and renamed into place, so a run that is
killed never leaves a half-written entry. The key hashes everything the tokens depend on: the bytes of every input
file, how each is read (format, columns, split), the tokenizer (vocabulary, merges, chat template, special tokens),
system prompt, max length, cleaning rules, and the source of this package's data code. Weights and
max_train_samples select from the cached rows and are not part of the key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from thinktune.models.loading import cache_root

CACHE_VERSION = 1
CHUNK = 1 << 20


def data_cache_dir(cache_dir: str | None = None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else cache_root() / "data"


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, or of every file (name and bytes) inside a directory."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    return h.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # slow tokenizers: the vocabulary is what decides the ids
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(tokenizer.chat_template).encode())
    h.update(json.dumps([type(tokenizer).__name__, tokenizer.eos_token, tokenizer.bos_token]).encode())
    return h.hexdigest()


def code_digest() -> str:
    """Hash of this package's data code: a change to rendering or cleaning must not reuse old tokens."""
    h = hashlib.sha256(str(CACHE_VERSION).encode())
    for p in sorted(Path(__file__).parent.glob("*.py")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def publish(tmp: Path, final: Path) -> bool:
    """Move a finished build into place; False if another process published the same key first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, final)
        return True
    except OSError:
        if final.is_dir():
            return False
        raise
