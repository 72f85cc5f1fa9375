"""Shared pytest fixtures: tiny offline random models for every supported arch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny_models import TINY_ARCHS, build_tiny_model, build_tiny_tokenizer

# Tiny models are overhead-bound: one thread each is faster, and keeps parallel test processes (and the CLI
# subprocesses that inherit this) from fighting over the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    config.addinivalue_line("markers", "slow: integration tests on SmolLM2")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: build_tiny_model(arch, root / arch) for arch in TINY_ARCHS}


@pytest.fixture(params=TINY_ARCHS, ids=TINY_ARCHS)
def tiny_model_dir(request, tiny_model_dirs) -> Path:
    return tiny_model_dirs[request.param]


@pytest.fixture(scope="session")
def contracts_index(tmp_path_factory) -> Path:
    """The bundled contract clauses indexed with BM25 + all-MiniLM-L6-v2 (the shipped local model)."""
    from thinktune.rag.index import build_index

    path = tmp_path_factory.mktemp("rag") / "contracts-index"
    build_index("bundled:contracts", path)
    return path
