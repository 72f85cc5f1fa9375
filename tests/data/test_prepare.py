"""The data stage of a run: same samples as tokenising one by one, content-hash cache, mixing, cleaning, procs."""

from __future__ import annotations

import json

import pytest

import thinktune.data.prepare as prepare_mod
from thinktune.config import DataConfig
from thinktune.data.packing import pack
from thinktune.data.prepare import epoch_samples, prepare_training_data
from thinktune.data.reading import read_records
from thinktune.data.render import tokenize_conversation
from thinktune.data.spec import AugmentConfig, CleaningConfig, DataOptions, DatasetSpec
from thinktune.errors import DataError


def conv(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def config(train, **kw) -> DataConfig:
    """A DataConfig whose `train` may hold DatasetSpecs (the proposed field type; set without validation here)."""
    return DataConfig(test=None, **kw).model_copy(update={"train": list(train)})


@pytest.fixture
def opts(tmp_path):
    return DataOptions(cache_dir=str(tmp_path / "cache"))


def samples_of(data):
    return [(s.input_ids, s.labels) for s in data.samples]


def test_same_samples_as_tokenizing_one_by_one(tiny_tokenizer, opts):
    cfg = config(["bundled:arithmetic/test"], max_length=512)
    data = prepare_training_data(cfg, tiny_tokenizer, opts)
    records = read_records("bundled:arithmetic/test").records
    expected = [tokenize_conversation(tiny_tokenizer, r["messages"], None, 512) for r in records]
    assert samples_of(data) == [(s.input_ids, s.labels) for s in expected]
    assert data.total_records == len(records) and data.rejects == []
    assert [r["meta"]["line"] for r in data.records] == [r["meta"]["line"] for r in records]
    assert data.samples[1:3] == [data.samples[1], data.samples[2]]


def test_rejects_keep_file_line_reason(tiny_tokenizer, tmp_path, opts):
    long_answer = "word " * 400
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [conv("q1", "a1"), "{oops", conv("q2", long_answer), {"messages": [{"role": "user", "content": "x"}]}],
    )
    data = prepare_training_data(config([path], max_length=64, max_bad_fraction=0.9), tiny_tokenizer, opts)
    assert len(data.samples) == 1 and data.total_records == 4
    got = [(r.file, r.line, r.reason.split(":")[0]) for r in data.rejects]
    assert got == [(path, 2, "invalid JSON"), (path, 3, "too long"), (path, 4, "no assistant message to learn from")]
    with pytest.raises(DataError, match="3/4 records unusable"):
        prepare_training_data(config([path], max_length=64), tiny_tokenizer, opts)


def test_second_run_hits_the_cache(tiny_tokenizer, tmp_path, opts, monkeypatch):
    path = write_jsonl(tmp_path / "t.jsonl", [conv(f"question {i}?", f"answer {i}") for i in range(30)] + ["{bad"])
    cfg = config([path], max_bad_fraction=0.5)
    first = prepare_training_data(cfg, tiny_tokenizer, opts)
    assert not first.cache_hit

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenised again despite the cache")

    monkeypatch.setattr(prepare_mod, "tokenize_rows", no_tokenizing)
    second = prepare_training_data(cfg, tiny_tokenizer, opts)
    assert second.cache_hit
    assert samples_of(second) == samples_of(first)
    assert second.rejects == first.rejects and second.total_records == first.total_records == 31
    entries = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "dataset_info.json").is_file()  # Arrow files via save_to_disk

    # new content under the same path is a new key
    monkeypatch.undo()
    write_jsonl(tmp_path / "t.jsonl", [conv("changed?", "yes")])
    third = prepare_training_data(cfg, tiny_tokenizer, opts)
    assert not third.cache_hit and len(third.samples) == 1


def test_cache_off_writes_nothing(tiny_tokenizer, tmp_path):
    opts = DataOptions(cache=False, cache_dir=str(tmp_path / "cache"))
    data = prepare_training_data(config(["bundled:arithmetic/test"]), tiny_tokenizer, opts)
    assert len(data.samples) > 0 and not data.cache_hit
    assert list((tmp_path / "cache").iterdir()) == []


def test_two_processes_give_the_same_samples(tiny_tokenizer, tmp_path):
    one = prepare_training_data(config(["bundled:arithmetic/test"]), tiny_tokenizer, DataOptions(cache=False))
    two = prepare_training_data(
        config(["bundled:arithmetic/test"]), tiny_tokenizer, DataOptions(cache=False, num_proc=2)
    )
    assert samples_of(one) == samples_of(two)


def test_datasets_mixed_with_weights(tiny_tokenizer, tmp_path, opts):
    a = write_jsonl(tmp_path / "a.jsonl", [conv(f"alpha {i}", "A") for i in range(10)])
    b = tmp_path / "b.csv"
    b.write_text("q,r\n" + "".join(f"beta {i},B\n" for i in range(10)))
    c = write_jsonl(tmp_path / "c.jsonl", [conv(f"gamma {i}", "C") for i in range(10)])
    specs = [
        DatasetSpec(path=a, weight=2.0),
        DatasetSpec(path=str(b), weight=0.5, columns={"prompt": "q", "response": "r"}),
        DatasetSpec(path=c, weight=0),
    ]
    data = prepare_training_data(config(specs), tiny_tokenizer, opts)
    answers = [r["messages"][-1]["content"] for r in data.records]
    assert answers.count("A") == 20 and answers.count("B") == 5 and "C" not in answers
    again = prepare_training_data(config(specs), tiny_tokenizer, opts)
    assert again.cache_hit and [r["meta"]["line"] for r in again.records] == [r["meta"]["line"] for r in data.records]
    other_seed = prepare_training_data(config(specs), tiny_tokenizer, opts.model_copy(update={"seed": 7}))
    picked = {r["meta"]["line"] for r in other_seed.records if r["meta"]["source"] == str(b)}
    assert len(picked) == 5 and picked != {r["meta"]["line"] for r in data.records if r["meta"]["source"] == str(b)}


def test_cleaning_stage_rejects_do_not_count_as_bad(tiny_tokenizer, tmp_path, opts):
    rows = [conv("same question?", "same answer")] * 5 + [conv("other question?", "fine")]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cleaned = opts.model_copy(update={"cleaning": CleaningConfig()})
    data = prepare_training_data(config([path], max_bad_fraction=0.0), tiny_tokenizer, cleaned)
    assert len(data.samples) == 2
    assert [(r.line, r.rule) for r in data.rejects] == [(i, "exact_duplicate") for i in (2, 3, 4, 5)]
    assert data.cleaning["removed"] == {"exact_duplicate": 4}
    assert (
        prepare_training_data(config([path], max_bad_fraction=0.0), tiny_tokenizer, cleaned).cleaning == data.cleaning
    )


def test_max_train_samples_and_packing(tiny_tokenizer, opts):
    data = prepare_training_data(config(["bundled:arithmetic/test"], max_train_samples=40), tiny_tokenizer, opts)
    assert len(data.samples) == 40
    packed = pack(data.samples, 512)
    assert sum(len(p.seq_lens) for p in packed) == 40 and len(packed) < 40
    assert data.samples.lengths() == [len(s.input_ids) for s in data.samples]


def test_epoch_samples_retemplate_a_fresh_fraction(tiny_tokenizer, opts):
    cfg = config(["bundled:arithmetic/test"])
    augmented = opts.model_copy(update={"augment": AugmentConfig(template_fraction=0.5)})
    data = prepare_training_data(cfg, tiny_tokenizer, augmented)
    assert epoch_samples(data, tiny_tokenizer, cfg, 0, opts) is data.samples  # off by default
    e0 = epoch_samples(data, tiny_tokenizer, cfg, 0, augmented)
    e1 = epoch_samples(data, tiny_tokenizer, cfg, 1, augmented)
    changed0 = {i for i in range(len(data.samples)) if e0[i].input_ids != data.samples[i].input_ids}
    changed1 = {i for i in range(len(data.samples)) if e1[i].input_ids != data.samples[i].input_ids}
    assert 0.3 * len(data.samples) < len(changed0) < 0.7 * len(data.samples)
    assert changed0 != changed1
    for i in list(changed0)[:5]:  # answers (the trained tokens) are the same, only the prompt changed
        assert [t for t in e0[i].labels if t != -100] == [t for t in data.samples[i].labels if t != -100]


def test_epoch_samples_are_cached_and_keyed_by_record(tiny_tokenizer, opts, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [conv(f"What is {i} + 1?", str(i + 1)) for i in range(20)])
    cfg = config([DatasetSpec(path=path, weight=2)])  # every row twice: the copies draw apart
    augmented = opts.model_copy(update={"augment": AugmentConfig(template_fraction=0.5)})
    data = prepare_training_data(cfg, tiny_tokenizer, augmented)
    assert len(data.keys) == 40 and data.keys[:2] == [f"{path}:1:0", f"{path}:1:1"]
    e1 = epoch_samples(data, tiny_tokenizer, cfg, 1, augmented)
    built = list((tmp_path / "cache").glob("epoch-*"))
    assert len(built) == 1
    again = epoch_samples(data, tiny_tokenizer, cfg, 1, augmented)  # read from the cache
    assert [s.input_ids for s in again] == [s.input_ids for s in e1] and again.augmented == e1.augmented
    assert list((tmp_path / "cache").glob("epoch-*")) == built
    uncached = epoch_samples(data, tiny_tokenizer, cfg, 1, augmented.model_copy(update={"cache": False}))
    assert [s.input_ids for s in uncached] == [s.input_ids for s in e1]
    pairs = [(i in e1.augmented, i + 1 in e1.augmented) for i in range(0, 40, 2)]
    assert any(a != b for a, b in pairs)  # an upsampled row's two copies are drawn independently
    assert set(e1.counts()) == {"templates"} and sum(e1.counts().values()) == len(e1.augmented)
