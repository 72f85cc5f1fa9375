"""Models by Hub id (`org/name`), offline, from a real huggingface_hub cache layout the test builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.hub_cache import add_to_hub_cache, gsm8k_repo, repo_folder
from thinktune.config import DataConfig, ModelConfig
from thinktune.data.reading import resolve_path
from thinktune.errors import ModelNotFoundError
from thinktune.hub import cached_repos, go_offline, hub_cache_dir, is_hub_id
from thinktune.models.loading import load_pretrained, resolve_model
from thinktune.models.memory import model_shape

ROOT = Path(__file__).parents[2]
TEMPLATES = ROOT.parent / "shared" / "templates"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.mark.parametrize(
    ("ref", "hub"),
    [
        ("org/name", True),
        ("Qwen/Qwen3-8B", True),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", True),
        ("smollm2-135m-instruct", False),
        ("./org/name", False),
        ("/abs/path", False),
        ("a/b/c", False),
        ("model.gguf", False),
    ],
)
def test_is_hub_id(ref, hub):
    assert is_hub_id(ref) is hub


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert hub_cache_dir() == tmp_path / "c"


def test_hub_id_loads_offline_from_the_cache(hub_cache, tiny_model_dirs):
    commit = add_to_hub_cache(hub_cache, "tiny-org/tiny-llama", tiny_model_dirs["llama"])
    snap = repo_folder(hub_cache, "tiny-org/tiny-llama") / "snapshots" / commit
    assert (snap / "config.json").is_symlink()  # the layout huggingface_hub writes
    model, tok, source = load_pretrained(ModelConfig(name_or_path="tiny-org/tiny-llama", dtype="float32"))
    assert source.path == snap
    ref, _, _ = load_pretrained(ModelConfig(name_or_path=str(tiny_model_dirs["llama"]), dtype="float32"))
    ids = torch.tensor([[1, 5, 9, 2]])
    assert torch.equal(model(ids).logits, ref(ids).logits)
    assert tok.chat_template


def test_revision_picks_a_branch(hub_cache, tiny_model_dirs):
    main = add_to_hub_cache(hub_cache, "tiny-org/m", tiny_model_dirs["llama"])
    other = add_to_hub_cache(hub_cache, "tiny-org/m", tiny_model_dirs["qwen3"], ref="qwen")
    assert main != other
    assert resolve_model("tiny-org/m").path.name == main
    assert resolve_model("tiny-org/m", revision="qwen").path.name == other
    assert resolve_model("tiny-org/m", revision=other).path.name == other  # a commit hash works too
    assert model_shape("tiny-org/m", revision="qwen") == model_shape(str(tiny_model_dirs["qwen3"]))  # thinktune plan
    cfg = ModelConfig(name_or_path="tiny-org/m", revision="qwen", dtype="float32")
    model, _, _ = load_pretrained(cfg)
    assert model.config.model_type == "qwen3"


def test_uncached_id_offline_is_one_line_naming_id_revision_and_cache(hub_cache):
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("nobody/nothing", revision="v2")
    msg = str(e.value)
    assert "\n" not in msg
    assert "nobody/nothing" in msg and "v2" in msg and str(hub_cache) in msg and "offline" in msg


def test_local_paths_and_bundled_name_never_ask_the_hub(hub_cache, tiny_model_dirs, monkeypatch):
    def no_hub(*a, **k):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr("thinktune.models.loading.snapshot", no_hub)
    monkeypatch.setattr("thinktune.data.hub_datasets.snapshot", no_hub)
    assert resolve_model(str(tiny_model_dirs["llama"])).path == tiny_model_dirs["llama"]
    # `thinktune train` with no arguments: the bundled model (already converted) and the bundled data
    monkeypatch.setenv("THINKTUNE_HOME", str(hub_cache.parent / "tt"))
    converted = hub_cache.parent / "tt" / "models" / "smollm2-135m-instruct"
    converted.mkdir(parents=True)
    (converted / "config.json").write_text("{}")
    assert resolve_model(ModelConfig().name_or_path).path == converted
    for ref in (*DataConfig().train, DataConfig().test):
        assert resolve_path(ref).is_file()
    with pytest.raises(ModelNotFoundError, match="local model directory"):
        resolve_model("no/such/dir")


def test_gguf_in_a_hub_repo(hub_cache, tmp_path):
    src = tmp_path / "gguf_repo"
    src.mkdir()
    (src / "r1.gguf").symlink_to(TEMPLATES / "deepseek-r1-distill-qwen.vocab.gguf")
    add_to_hub_cache(hub_cache, "tiny-org/r1-gguf", src)
    source = resolve_model("tiny-org/r1-gguf", gguf_file="r1.gguf")
    assert source.gguf_file == "r1.gguf" and (source.path / "r1.gguf").is_file()
    with pytest.raises(ModelNotFoundError, match="no GGUF file other.gguf"):
        resolve_model("tiny-org/r1-gguf", gguf_file="other.gguf")


def test_cached_repos_lists_ids_sizes_and_revisions(hub_cache, tiny_model_dirs):
    commit = add_to_hub_cache(hub_cache, "tiny-org/tiny-llama", tiny_model_dirs["llama"])
    [(repo_id, kind, size, revs)] = cached_repos()
    assert (repo_id, kind) == ("tiny-org/tiny-llama", "model")
    assert size > 0 and revs == [f"main@{commit[:8]}"]


def test_go_offline_sets_every_library_offline(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    go_offline()
    assert all(os.environ[v] == "1" for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def thinktune(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "thinktune", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200", **env},
    )


TINY = ["--set", "data.max_train_samples=16", "--set", "train.max_steps=2", "--set", "train.batch_size=4"]
TINY += ["--set", "eval.max_samples=3", "--set", "eval.max_new_tokens=6", "--set", "data.max_length=512"]


def test_train_by_hub_ids_offline_cli(tmp_path, tiny_model_dirs):
    cache = tmp_path / "hf" / "hub"
    add_to_hub_cache(cache, "tiny-org/tiny-qwen3", tiny_model_dirs["qwen3"])
    env = {"HF_HUB_CACHE": str(cache), "THINKTUNE_HOME": str(tmp_path / "tt")}
    out = tmp_path / "run"
    add_to_hub_cache(cache, "some-org/gsm8k-mini", gsm8k_repo(tmp_path / "ds"), repo_type="dataset")
    data = 'data.train=["hf:some-org/gsm8k-mini:main[train]"]'  # quoted: brackets inside a YAML flow list
    hub = ["--set", "model.name_or_path=tiny-org/tiny-qwen3", "--set", data]
    r = thinktune("train", "--offline", *hub, "-o", str(out), *TINY, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "adapter" / "adapter_config.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2

    r = thinktune("train", "--offline", "--set", "model.name_or_path=tiny-org/missing", *TINY, env=env)
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and "tiny-org/missing" in line and str(cache) in line and "Traceback" not in line


def test_doctor_lists_cached_models(hub_cache, tiny_model_dirs):
    from thinktune.doctor import hub_cache_checks

    add_to_hub_cache(hub_cache, "tiny-org/tiny-llama", tiny_model_dirs["llama"])
    checks = {c.name: c.value for c in hub_cache_checks()}
    assert str(hub_cache) in checks["hf cache"] and "offline" in checks["hf cache"]
    assert "main@" in checks["cached model tiny-org/tiny-llama"]
