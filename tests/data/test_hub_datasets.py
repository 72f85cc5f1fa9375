"""Datasets by Hub id (`hf:org/name:config[split]`), offline, from a real huggingface_hub cache the test builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hub_cache import add_to_hub_cache, gsm8k_repo
from thinktune.data.hub_datasets import HubDatasetRef, config_files, parse_hf_ref
from thinktune.data.reading import read_records, resolve_path, source_digest, split_row_slice
from thinktune.errors import DataError


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    add_to_hub_cache(cache, "some-org/gsm8k-mini", gsm8k_repo(tmp_path / "repo"), repo_type="dataset")
    return cache


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("hf:openai/gsm8k", HubDatasetRef("openai/gsm8k", None, None, None)),
        ("hf:openai/gsm8k:main[train]", HubDatasetRef("openai/gsm8k", None, "main", "train")),
        ("hf:openai/gsm8k@v1.0:main[test]", HubDatasetRef("openai/gsm8k", "v1.0", "main", "test")),
        ("hf:org/name[train]", HubDatasetRef("org/name", None, None, "train")),
    ],
)
def test_parse_hf_ref(ref, parsed):
    assert parse_hf_ref(ref) == parsed


@pytest.mark.parametrize(
    ("ref", "split"),
    [
        ("hf:org/name[train]", ("hf:org/name[train]", None)),
        ("hf:org/name:main[train][:100]", ("hf:org/name:main[train]", (None, "100"))),
        ("hf:org/name[10:50%]", ("hf:org/name", ("10", "50%"))),
    ],
)
def test_split_brackets_are_not_row_slices(ref, split):
    assert split_row_slice(ref) == split


def test_reads_a_config_and_split_offline(hub_cache):
    loaded = read_records("hf:some-org/gsm8k-mini:main[train]")
    assert len(loaded.records) == 12 and not loaded.rejects
    first = loaded.records[0]
    assert first["meta"]["source"] == "hf:some-org/gsm8k-mini:main[train]" and first["meta"]["line"] == 1
    assert first["messages"][0]["content"] == "What is 0 + 0?"
    assert [r["meta"]["line"] for r in read_records("hf:some-org/gsm8k-mini:main[test]").records] == list(range(1, 9))
    assert len(read_records("hf:some-org/gsm8k-mini:other[train]").records) == 2


def test_row_slices_as_for_files(hub_cache):
    rows = read_records("hf:some-org/gsm8k-mini:main[train][2:5]").records
    assert [r["meta"]["line"] for r in rows] == [3, 4, 5]
    assert len(read_records("hf:some-org/gsm8k-mini:main[train][:50%]").records) == 6
    assert len(read_records("hf:some-org/gsm8k-mini:main[train][-2:]").records) == 2


def test_bad_split_or_config_is_one_line(hub_cache):
    with pytest.raises(DataError, match=r"available: train, test"):
        read_records("hf:some-org/gsm8k-mini:main[validation]")
    with pytest.raises(DataError, match="choose a split"):
        read_records("hf:some-org/gsm8k-mini:main")
    with pytest.raises(DataError, match="nope") as e:
        read_records("hf:some-org/gsm8k-mini:nope[train]")
    assert "\n" not in str(e.value)


def test_uncached_dataset_offline_names_it_and_the_cache(hub_cache):
    with pytest.raises(DataError) as e:
        resolve_path("hf:nobody/nothing:main[train]")
    msg = str(e.value)
    assert "\n" not in msg and "nobody/nothing" in msg and str(hub_cache) in msg and "offline" in msg


def test_cache_key_is_the_resolved_commit(hub_cache, tmp_path):
    digest = source_digest("hf:some-org/gsm8k-mini:main[train][:4]")
    assert digest.startswith("some-org/gsm8k-mini@") and digest == source_digest("hf:some-org/gsm8k-mini[test]")
    repo = gsm8k_repo(tmp_path / "repo2", n_train=10)  # a new commit on main changes the key
    add_to_hub_cache(hub_cache, "some-org/gsm8k-mini", repo, repo_type="dataset")
    assert source_digest("hf:some-org/gsm8k-mini:main[train]") != digest


GSM8K_CARD = {
    "configs": [
        {
            "config_name": "main",
            "data_files": [{"split": "train", "path": "main/train-*"}, {"split": "test", "path": "main/test-*"}],
        },
        {"config_name": "socratic", "data_files": [{"split": "train", "path": ["socratic/train-*"]}]},
    ]
}


@pytest.mark.parametrize(
    ("card", "config", "files"),
    [
        (GSM8K_CARD, "main", ["README.md", "main/train-*", "main/test-*"]),
        (GSM8K_CARD, "socratic", ["README.md", "socratic/train-*"]),
        ({"configs": [{"config_name": "default", "data_files": "data/*.jsonl"}]}, None, ["README.md", "data/*.jsonl"]),
        ({"configs": [{"config_name": "a", "data_files": {"train": "a.csv"}}]}, None, ["README.md", "a.csv"]),
        ({"license": "mit"}, None, None),  # no configs: datasets reads the layout of the whole repo
        (None, "main", None),
    ],
)
def test_config_files_from_the_card(card, config, files):
    assert config_files(card, config) == files


def test_unknown_or_missing_config_is_refused_before_downloading():
    with pytest.raises(DataError, match=r"no config 'nope' \(available: main, socratic\)"):
        config_files(GSM8K_CARD, "nope")
    with pytest.raises(DataError, match="choose a config"):
        config_files(GSM8K_CARD, None)


def test_online_downloads_the_card_then_only_the_config(hub_cache, monkeypatch):
    import thinktune.data.hub_datasets as hd

    asked = []
    real = hd.snapshot

    def recording(repo, revision, repo_type, allow=None):
        asked.append(allow)
        return real(repo, revision, repo_type, allow)  # still served from the cache: the test has no network

    monkeypatch.setattr(hd, "offline", lambda: False)
    monkeypatch.setattr(hd, "snapshot", recording)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert len(read_records("hf:some-org/gsm8k-mini:other[train]").records) == 2
    assert asked[:2] == [["README.md"], ["README.md", "other/train-*"]]


def test_data_validate_names_the_reference_with_its_brackets(hub_cache):
    from typer.testing import CliRunner

    from thinktune.cli import app

    r = CliRunner().invoke(app, ["data", "validate", "hf:some-org/gsm8k-mini:main[train][:5]"])
    assert r.exit_code == 0, r.output
    assert "hf:some-org/gsm8k-mini:main[train][:5]: 5 usable, 0 rejected" in r.output
    r = CliRunner().invoke(app, ["data", "validate", "hf:some-org/missing[train]"])
    assert r.exit_code == 2 and "some-org/missing" in r.output
