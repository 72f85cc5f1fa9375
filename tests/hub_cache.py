"""A real huggingface_hub cache, built offline: what `snapshot_download` leaves behind, for tests of Hub ids.

<cache>/models--org--name/
  blobs/<sha256>                      file contents, one per distinct file
  snapshots/<commit>/<path>           relative symlinks into blobs/ (copies where symlinks are not allowed)
  refs/<branch>                       the commit the branch points to
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def repo_folder(cache: Path, repo_id: str, repo_type: str = "model") -> Path:
    return cache / f"{repo_type}s--{repo_id.replace('/', '--')}"


def add_to_hub_cache(cache: Path, repo_id: str, src: Path, repo_type: str = "model", ref: str = "main") -> str:
    """Put every file under `src` into the cache as one commit of `repo_id` that branch `ref` points to; returns the
    commit hash (derived from the contents, so the same files give the same commit)."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for p in files:
        digest.update(str(p.relative_to(src)).encode() + b"\0" + p.read_bytes())
    commit = digest.hexdigest()
    root = repo_folder(cache, repo_id, repo_type)
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    snap = root / "snapshots" / commit
    for p in files:
        blob = root / "blobs" / hashlib.sha256(p.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copyfile(p, blob)
        dest = snap / p.relative_to(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        try:
            dest.symlink_to(os.path.relpath(blob, dest.parent))
        except OSError:
            shutil.copyfile(blob, dest)
    (root / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    return commit


CARD = """---
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train-*
  - split: test
    path: main/test-*
- config_name: other
  data_files:
  - split: train
    path: other/train-*
---
# a GSM8K-shaped dataset
"""


def gsm8k_repo(root: Path, n_train: int = 12) -> Path:
    """The layout of openai/gsm8k on the Hub: a dataset card naming configs, Parquet files per config and split."""
    (root / "main").mkdir(parents=True)
    (root / "other").mkdir()
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(20)]
    pq.write_table(pa.Table.from_pylist(rows[:n_train]), root / "main" / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[n_train:]), root / "main" / "test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:2]), root / "other" / "train-00000-of-00001.parquet")
    (root / "README.md").write_text(CARD)
    return root
