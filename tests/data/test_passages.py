"""data.rag: training prompts with the gold passage and distractors (RAFT), in the rendered samples, the data cache
key and `thinktune data inspect`; records without gold ids are rejects with file and line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from thinktune.cli import app
from thinktune.config import DataConfig, RagConfig, load_config
from thinktune.data.passages import PassageAdder
from thinktune.data.prepare import dataset_key, prepare_training_data
from thinktune.data.reading import read_records
from thinktune.data.spec import DataOptions, as_spec
from thinktune.rag.prompt import HEADER


def rag(index, **kw) -> RagConfig:
    return RagConfig(index=str(index), **kw)


def test_gold_kept_share_count_and_determinism(contracts_index):
    recs = read_records("bundled:contracts/train").records
    adder = PassageAdder(rag(contracts_index, distractors=2, gold_fraction=0.5), seed=7)
    out = [adder(r) for r in recs]
    assert out == [adder(r) for r in recs]  # seeded by the record's file and line
    kept = [o["meta"]["rag"]["gold_kept"] for o in out]
    assert 0 < sum(kept) < len(kept)
    for rec, o in zip(recs, out, strict=True):
        ids, gold = o["meta"]["rag"]["passages"], rec["meta"]["gold_ids"]
        assert len(ids) == len(set(ids))
        shown_gold = [g for g in gold if g in ids]
        if o["meta"]["rag"]["gold_kept"]:
            assert shown_gold == gold and len(ids) == 2 + len(gold)
        else:
            assert not shown_gold and len(ids) == 3
        user = o["messages"][0]["content"]
        assert user.endswith(f"Question: {rec['messages'][0]['content']}")
        assert all(f"\n[{i}] " in user for i in ids)
        assert o["messages"][1:] == rec["messages"][1:]  # the answer (citing [Cxx]) is trained as written
    all_kept = PassageAdder(rag(contracts_index, gold_fraction=1.0), seed=7)
    none_kept = PassageAdder(rag(contracts_index, gold_fraction=0.0), seed=7)
    assert all(all_kept(r)["meta"]["rag"]["gold_kept"] for r in recs)
    assert not any(none_kept(r)["meta"]["rag"]["gold_kept"] for r in recs)


def test_rendered_training_samples_hold_the_passages(tiny_tokenizer, contracts_index, tmp_path):
    cfg = DataConfig(train=["bundled:contracts/train"], test=None, rag=rag(contracts_index, gold_fraction=1.0))
    data = prepare_training_data(cfg, tiny_tokenizer, DataOptions(cache_dir=str(tmp_path / "cache")))
    assert len(data.samples) == 30 and not data.rejects
    first = data.records[0]
    text = tiny_tokenizer.decode(data.samples[0].input_ids)
    assert HEADER.split("e.g.")[0] in text and "[C02] Term." in text and "Question: How long is the initial" in text
    assert first["meta"]["rag"]["gold_kept"] and "C02" in first["meta"]["rag"]["passages"]
    trained = tiny_tokenizer.decode([t for t in data.samples[0].labels if t != -100])
    assert "[C02]" in trained and "Passages" not in trained  # passages are prompt, the citing answer is trained
    plain = DataConfig(train=["bundled:contracts/train"], test=None)
    other = cfg.model_copy(update={"rag": rag(contracts_index, gold_fraction=0.5)})
    keys = {dataset_key([as_spec(t) for t in c.train], tiny_tokenizer, c, None) for c in (cfg, plain, other)}
    assert len(keys) == 3  # the settings (and the index's contents) are part of the cache key


def test_records_without_gold_ids_are_rejects(tiny_tokenizer, contracts_index, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "Which law applies?"}, {"role": "assistant", "content": "[C29]"}],
         "gold_ids": ["C29"]},
        {"messages": [{"role": "user", "content": "Which law?"}, {"role": "assistant", "content": "Irish."}]},
        {"messages": [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "[C99]"}],
         "gold_ids": "C99"},
    ]  # fmt: skip
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(train=[str(path)], test=None, rag=rag(contracts_index), max_bad_fraction=1.0)
    data = prepare_training_data(cfg, tiny_tokenizer, DataOptions(cache_dir=str(tmp_path / "cache")))
    assert len(data.samples) == 1
    reasons = {r.line: r.reason for r in data.rejects}
    assert reasons[2] == "data.rag: no gold_ids (the ids of the passages the answer rests on)"
    assert reasons[3] == f"data.rag: gold id 'C99' is not in the index {contracts_index}"


def test_config_section_and_refusals(tmp_path):
    cfg = load_config(None, ["data.rag.index=ix", "data.rag.distractors=1"])
    assert cfg.data.rag == RagConfig(index="ix", distractors=1)
    with pytest.raises(Exception, match="data.rag.gold_fraction"):
        load_config(None, ["data.rag.index=ix", "data.rag.gold_fraction=2"])
    with pytest.raises(Exception, match="no rag index here"):
        PassageAdder(rag(tmp_path / "missing"), 0)


def test_data_inspect_shows_the_passages(tiny_model_dirs, contracts_index):
    args = ["data", "inspect", "bundled:contracts/train", "--model", str(tiny_model_dirs["llama"]), "-n", "2"]
    r = CliRunner().invoke(app, [*args, "--rag-index", str(contracts_index)], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert r.exit_code == 0, r.output
    assert r.output.count("   passages: ") == 2 and "Question: How long is the initial term" in r.output
    assert "[C02] Term. This Agreement begins" in r.output
    bad = CliRunner().invoke(app, [*args, "--rag-index", str(contracts_index), "--rag-gold-fraction", "1.5"])
    assert bad.exit_code == 2 and "--rag-gold-fraction: Input should be less than or equal to 1" in bad.output
