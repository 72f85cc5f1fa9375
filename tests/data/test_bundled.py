"""The bundled arithmetic task: deterministic, shipped files up to date, train and test never overlap."""

import json

from thinktune.data.bundled import arithmetic
from thinktune.data.reading import read_records, resolve_path
from thinktune.eval.reasoning import answers_match, extract_answer
from thinktune.eval.tasks import load_tasks


def _questions(ref):
    return [r["messages"][0]["content"] for r in read_records(ref).records]


def test_train_and_test_never_overlap():
    train, test = _questions("bundled:arithmetic/train"), _questions("bundled:arithmetic/test")
    assert len(train) == arithmetic.N_TRAIN and len(test) == arithmetic.N_TEST
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test)


def test_shipped_files_match_the_generator():
    train, test = arithmetic.generate()
    for split, rows in (("train", train), ("test", test)):
        shipped = [json.loads(x) for x in resolve_path(f"bundled:arithmetic/{split}").read_text().splitlines()]
        assert shipped == rows, f"regenerate with: python -m thinktune.data.bundled.arithmetic ({split})"


def test_every_trace_is_correct_and_boxed():
    for rec in read_records("bundled:arithmetic/train").records:
        reply = rec["messages"][-1]
        assert reply["reasoning"] and answers_match(extract_answer(reply["content"]), rec["meta"]["answer"])
    tasks = load_tasks("bundled:arithmetic/test").records
    assert len(tasks) == arithmetic.N_TEST and all(t["prompt"][-1]["role"] == "user" for t in tasks)
