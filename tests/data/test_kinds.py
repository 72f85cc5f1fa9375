"""Seed-style SFT formats, preference pairs, prompt+answer tasks and column mappings → canonical records."""

from __future__ import annotations

import json

import pytest

from thinktune.data.formats import FORMATS, RecordError, detect_format, to_sft_record
from thinktune.data.records import conversation, format_names, to_record, to_row
from thinktune.data.spec import ColumnMap, DatasetSpec, dataset_info_spec


def msg(role: str, content: str, reasoning: str | None = None) -> dict:
    return {"role": role, "content": content, "reasoning": reasoning}


SEED_GOOD = [
    (
        "text_context",
        {"context": "Name a prime.", "text": "<think>2 is prime</think>2", "id": 4},
        [msg("user", "Name a prime."), msg("assistant", "2", "2 is prime")],
        {"id": 4},
    ),
    (
        "query_response",
        {"query": "Capital of France?", "response": "Paris", "system": "Be brief."},
        [msg("system", "Be brief."), msg("user", "Capital of France?"), msg("assistant", "Paris")],
        {},
    ),
    (
        "question_answer",
        {"question": "2+2?", "answer": "4"},
        [msg("user", "2+2?"), msg("assistant", "4")],
        {"answer": "4"},
    ),
    (
        "question_answer",  # GSM8K: steps, then "#### final"
        {"question": "3 apples + 4?", "answer": "3 + 4 = 7\n#### 7"},
        [msg("user", "3 apples + 4?"), msg("assistant", "7", "3 + 4 = 7")],
        {"answer": "7"},
    ),
    (
        "question_answer",
        {"question": "6*7?", "answer": 42},
        [msg("user", "6*7?"), msg("assistant", "42")],
        {"answer": "42"},
    ),
]


@pytest.mark.parametrize(("fmt", "raw", "messages", "meta"), SEED_GOOD)
def test_seed_formats(fmt, raw, messages, meta):
    assert detect_format(raw) == fmt and fmt in FORMATS
    rec = to_sft_record(raw)
    assert rec["messages"] == messages
    assert rec["meta"] == {**meta, "format": fmt}


@pytest.mark.parametrize(
    ("raw", "fmt", "reason"),
    [
        ({"context": "q"}, "text_context", "missing field 'text'"),
        ({"context": 3, "text": "a"}, "text_context", "field 'context' must be a string, got int"),
        ({"query": "  ", "response": "a"}, "auto", "empty query"),
        ({"query": "q", "response": ""}, "auto", "response: empty assistant message"),
        ({"question": "q", "answer": None}, "auto", "field 'answer' must be a string, got NoneType"),
        ({"question": "q", "answer": "<think>x"}, "auto", "never closes"),
        ({"text": "only text"}, "auto", "unknown record format"),
    ],
)
def test_seed_formats_bad(raw, fmt, reason):
    with pytest.raises(RecordError, match=reason):
        to_sft_record(raw, fmt)


PREF_GOOD = [
    (
        "trl_strings",
        {"prompt": "2+2?", "chosen": "4", "rejected": "5", "source": "x"},
        [msg("user", "2+2?")],
        msg("assistant", "4"),
        msg("assistant", "5"),
        "prompt_chosen_rejected",
    ),
    (
        "trl_conversational",
        {
            "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": "<think>r</think>good"}],
            "rejected": [{"role": "assistant", "content": "bad"}],
        },
        [msg("system", "S"), msg("user", "q")],
        msg("assistant", "good", "r"),
        msg("assistant", "bad"),
        "prompt_chosen_rejected",
    ),
    (
        "llamafactory_sharegpt",
        {
            "conversations": [{"from": "human", "value": "hi"}],
            "chosen": {"from": "gpt", "value": "hello"},
            "rejected": {"from": "gpt", "value": "go away"},
        },
        [msg("user", "hi")],
        msg("assistant", "hello"),
        msg("assistant", "go away"),
        "sharegpt",
    ),
    (
        "llamafactory_alpaca",
        {"instruction": "Add", "input": "2 and 3", "chosen": "5", "rejected": "6"},
        [msg("user", "Add\n\n2 and 3")],
        msg("assistant", "5"),
        msg("assistant", "6"),
        "alpaca",
    ),
    (
        "implicit_prompt",
        {
            "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
        },
        [msg("user", "q")],
        msg("assistant", "a"),
        msg("assistant", "b"),
        "implicit",
    ),
]


@pytest.mark.parametrize(
    ("raw", "prompt", "chosen", "rejected", "fmt"), [p[1:] for p in PREF_GOOD], ids=[p[0] for p in PREF_GOOD]
)
def test_preference_records(raw, prompt, chosen, rejected, fmt):
    rec = to_record(raw, "preference")
    assert set(rec) == {"prompt", "chosen", "rejected", "meta"}
    assert (rec["prompt"], rec["chosen"], rec["rejected"], rec["meta"]["format"]) == (prompt, chosen, rejected, fmt)
    assert to_record(json.loads(json.dumps(to_row(rec))), "preference")["prompt"] == prompt  # writes read back


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"prompt": "q", "chosen": "a"}, "not a preference pair"),
        ({"prompt": "q", "chosen": "a", "rejected": "a"}, "chosen and rejected are identical"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "empty prompt"),
        ({"prompt": 5, "chosen": "a", "rejected": "b"}, "field 'prompt' must be a string or a non-empty list"),
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, "chosen must be an object"),
        ({"prompt": "q", "chosen": "a", "rejected": ""}, "rejected: empty assistant message"),
        (
            {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
            "chosen must be an assistant turn",
        ),
        (
            {"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"},
            "prompt must end with a user turn",
        ),
        (
            {
                "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}],
            },
            "differ before their last turn",
        ),
        (
            {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt"}, "rejected": "b"},
            "missing field 'value'",
        ),
    ],
)
def test_preference_bad(raw, reason):
    with pytest.raises(RecordError, match=reason):
        to_record(raw, "preference")


TASK_GOOD = [
    ({"prompt": "2+2?", "answer": "4"}, [msg("user", "2+2?")], "4", "prompt_answer"),
    ({"prompt": "2+2?", "answer": 4}, [msg("user", "2+2?")], "4", "prompt_answer"),
    ({"question": "3+4?", "answer": "3 + 4 = 7\n#### 7"}, [msg("user", "3+4?")], "7", "question_answer"),
    (
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}], "answer": "9"},
        [msg("user", "q")],
        "9",
        "messages",
    ),
    (
        {"prompt": [{"role": "user", "content": "q"}], "answer": "x", "system": "S"},
        [msg("system", "S"), msg("user", "q")],
        "x",
        "prompt_answer",
    ),
]


@pytest.mark.parametrize(("raw", "prompt", "answer", "fmt"), TASK_GOOD)
def test_task_records(raw, prompt, answer, fmt):
    rec = to_record(raw, "task")
    assert (rec["prompt"], rec["answer"], rec["meta"]["format"]) == (prompt, answer, fmt)
    assert conversation(rec)[-1] == msg("assistant", answer)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"prompt": "q"}, "no 'answer' field"),
        ({"prompt": "q", "answer": ["4"]}, "must be a string or a number"),
        ({"prompt": "q", "answer": "  "}, "empty answer"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]},
            "no reference answer",
        ),
        ({"prompt": [{"role": "user"}], "answer": "1"}, r"prompt\[0\] must be an object with 'role' and 'content'"),
    ],
)
def test_task_bad(raw, reason):
    with pytest.raises(RecordError, match=reason):
        to_record(raw, "task")


def test_task_formats_include_sft_formats():
    assert {"prompt_answer", "question_answer", "alpaca", "sharegpt"} <= set(format_names("task"))


COLUMN_CASES = [
    (
        "sft_prompt_response",
        {"prompt": "q", "response": "a", "system": "sys", "reasoning": "cot", "answer": "gold"},
        {"q": "2+2?", "a": "4", "sys": "Be exact.", "cot": "2+2=4", "gold": "4", "topic": "math"},
        "sft",
        {
            "messages": [msg("system", "Be exact."), msg("user", "2+2?"), msg("assistant", "4", "2+2=4")],
            "meta": {"topic": "math", "answer": "4", "format": "columns"},
        },
    ),
    (
        "sft_messages_with_tags",
        {"messages": "turns", "role_tag": "speaker", "content_tag": "text", "user_tag": "Q", "assistant_tag": "A"},
        {"turns": [{"speaker": "Q", "text": "hi"}, {"speaker": "A", "text": "hello"}]},
        "sft",
        {"messages": [msg("user", "hi"), msg("assistant", "hello")], "meta": {"format": "columns"}},
    ),
    (
        "preference",
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        {"q": "2+2?", "good": "4", "bad": "5"},
        "preference",
        {
            "prompt": [msg("user", "2+2?")],
            "chosen": msg("assistant", "4"),
            "rejected": msg("assistant", "5"),
            "meta": {"format": "columns"},
        },
    ),
    (
        "task",
        {"prompt": "problem", "answer": "solution"},
        {"problem": "1+1?", "solution": 2, "level": 1},
        "task",
        {"prompt": [msg("user", "1+1?")], "answer": "2", "meta": {"level": 1, "format": "columns"}},
    ),
]


@pytest.mark.parametrize(
    ("cols", "raw", "kind", "expected"), [c[1:] for c in COLUMN_CASES], ids=[c[0] for c in COLUMN_CASES]
)
def test_column_mapping(cols, raw, kind, expected):
    assert to_record(raw, kind, columns=ColumnMap(**cols)) == expected


@pytest.mark.parametrize(
    ("cols", "raw", "kind", "reason"),
    [
        ({"prompt": "q", "response": "a"}, {"a": "x"}, "sft", "column 'q' \\(prompt\\) is missing"),
        (
            {"prompt": "q", "response": "a"},
            {"q": 1, "a": "x"},
            "sft",
            "column 'q' \\(prompt\\) must be a string, got int",
        ),
        ({"prompt": "q"}, {"q": "x"}, "sft", "the column mapping has no 'response' column"),
        ({"messages": "m"}, {"m": "not a list"}, "sft", "column 'm' \\(messages\\) must be a non-empty list"),
        ({"messages": "m"}, {"m": [{"role": "bot", "content": "x"}]}, "sft", "unknown role 'bot'"),
        ({"prompt": "q", "chosen": "c"}, {"q": "x", "c": "y"}, "preference", "no 'rejected' column"),
        ({"prompt": "q", "answer": "a"}, {"q": "x"}, "task", "column 'a' \\(answer\\) is missing"),
    ],
)
def test_column_mapping_errors_name_the_column(cols, raw, kind, reason):
    with pytest.raises(RecordError, match=reason):
        to_record(raw, kind, columns=ColumnMap(**cols))


def test_column_map_needs_prompt_or_messages():
    with pytest.raises(ValueError, match="needs 'messages' or 'prompt'"):
        ColumnMap(response="a")


def test_llamafactory_dataset_info(tmp_path):
    (tmp_path / "data.jsonl").write_text(
        json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "sys": "S"})
        + "\n"
    )
    info = {
        "mine": {
            "file_name": "data.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "sys", "tools": "t"},
        }
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    spec = dataset_info_spec(tmp_path / "dataset_info.json", "mine", weight=2)
    assert isinstance(spec, DatasetSpec) and spec.weight == 2 and spec.columns.system == "sys"
    from thinktune.data.reading import read_records

    loaded = read_records(spec)
    assert loaded.rejects == []
    assert loaded.records[0]["messages"] == [msg("system", "S"), msg("user", "q"), msg("assistant", "a")]


@pytest.mark.parametrize("kind", ["sft", "preference", "task"])
def test_rows_read_back_identically(kind):
    raw = {
        "sft": {
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>r</think>a"}],
            "k": 1,
        },
        "preference": {"prompt": "q", "chosen": "a", "rejected": "b", "k": 1},
        "task": {"prompt": "q", "answer": "7", "k": 1},
    }[kind]
    rec = to_record(raw, kind)
    again = to_record(json.loads(json.dumps(to_row(rec))), kind)
    assert {k: v for k, v in again.items() if k != "meta"} == {k: v for k, v in rec.items() if k != "meta"}
    assert again["meta"]["k"] == 1
