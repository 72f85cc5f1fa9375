"""Reading JSON / JSONL files: records, rejects with exact file:line: reason, bundled sets, bad-fraction limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thinktune.data.reading import (
    LoadedRecords,
    Reject,
    bundled_names,
    check_bad_fraction,
    iter_raw,
    read_records,
    resolve_path,
    write_rejects,
)
from thinktune.errors import DataError

GOOD = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think>1+1=2</think>2"}]}
ALPACA = {"instruction": "2+2?", "output": "4"}
NO_ASSISTANT = {"messages": [{"role": "user", "content": "hi"}]}


def dump(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


def test_jsonl_good_and_bad_lines(tmp_path):
    lines = [
        dump(GOOD),  # 1
        "",  # 2 blank
        "{not json",  # 3
        dump(NO_ASSISTANT),  # 4
        "   ",  # 5 blank
        dump(ALPACA),  # 6
        dump([1, 2]),  # 7
        dump({"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]}),  # 8
        dump({**GOOD, "answer": "2"}),  # 9
    ]
    p = tmp_path / "train.jsonl"
    p.write_text("\n".join(lines) + "\n")
    loaded = read_records(str(p))

    assert [r["meta"]["line"] for r in loaded.records] == [1, 6, 9]
    assert all(r["meta"]["source"] == str(p) for r in loaded.records)
    assert [r["meta"]["format"] for r in loaded.records] == ["messages", "alpaca", "messages"]
    assert loaded.records[2]["meta"]["answer"] == "2"
    assert loaded.records[0]["messages"][1] == {"role": "assistant", "content": "2", "reasoning": "1+1=2"}

    got = [(r.file, r.line) for r in loaded.rejects]
    assert got == [(str(p), 3), (str(p), 4), (str(p), 7), (str(p), 8)]
    reasons = [r.reason for r in loaded.rejects]
    assert reasons[0].startswith("invalid JSON: ")
    assert reasons[1] == "no assistant message to learn from"
    assert reasons[2] == "record must be a JSON object, got list"
    assert "unknown role 'robot'" in reasons[3]
    assert loaded.total == 7


def test_jsonl_crlf_and_no_trailing_newline(tmp_path):
    p = tmp_path / "win.jsonl"
    p.write_bytes((dump(GOOD) + "\r\n" + "oops\r\n" + "\r\n" + dump(ALPACA)).encode())
    loaded = read_records(str(p))
    assert [r["meta"]["line"] for r in loaded.records] == [1, 4]
    assert [(r.line, r.reason.split(":")[0]) for r in loaded.rejects] == [(2, "invalid JSON")]


def test_jsonl_unicode_line_separator_inside_string(tmp_path):
    """U+2028 / U+0085 are legal inside JSON strings and must not split a JSONL line."""
    rec = {"messages": [{"role": "user", "content": "a\u2028b\u0085c"}, {"role": "assistant", "content": "ok"}]}
    p = tmp_path / "u.jsonl"
    p.write_text(dump(rec) + "\n" + dump(GOOD) + "\n", encoding="utf-8")
    loaded = read_records(str(p))
    assert loaded.rejects == []
    assert [r["meta"]["line"] for r in loaded.records] == [1, 2]
    assert loaded.records[0]["messages"][0]["content"] == "a\u2028b\u0085c"


def test_jsonl_with_utf8_bom(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes("\ufeff".encode() + (dump(GOOD) + "\n").encode())
    loaded = read_records(str(p))
    assert loaded.rejects == [] and len(loaded.records) == 1


def test_json_array_line_numbers(tmp_path):
    text = (
        "[\n"  # 1
        f"  {dump(GOOD)},\n"  # 2
        "  {\n"  # 3  multi-line item starts here
        '    "instruction": "3+3?",\n'
        '    "output": "6"\n'
        "  },\n"  # 6
        "\n"  # 7
        f"  {dump(NO_ASSISTANT)},\n"  # 8
        f"  {dump(ALPACA)}\n"  # 9
        "]\n"
    )
    p = tmp_path / "data.json"
    p.write_text(text)
    assert [line for line, _ in iter_raw(p)] == [2, 3, 8, 9]
    loaded = read_records(str(p))
    assert [r["meta"]["line"] for r in loaded.records] == [2, 3, 9]
    assert [(r.file, r.line, r.reason) for r in loaded.rejects] == [(str(p), 8, "no assistant message to learn from")]


def test_json_array_on_one_line(tmp_path):
    p = tmp_path / "one.json"
    p.write_text(dump([GOOD, ALPACA]))
    assert [line for line, _ in iter_raw(p)] == [1, 1]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[\n  {"a": 1},\n  {"b": \n]\n', ":4: invalid JSON"),
        ('{"messages": []}', ":1: a .json dataset must be a list of records"),
    ],
)
def test_bad_json_file_raises(tmp_path, text, fragment):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(DataError) as e:
        read_records(str(p))
    assert f"{p}{fragment}" in str(e.value)


def test_forced_format(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_text(dump(GOOD) + "\n" + dump(ALPACA) + "\n")
    loaded = read_records(str(p), "alpaca")
    assert [r["meta"]["line"] for r in loaded.records] == [2]
    assert [(r.line, r.reason) for r in loaded.rejects] == [(1, "field 'instruction' must be a string")]


@pytest.mark.parametrize("split", ["train", "test"])
def test_bundled_sets_resolve(split):
    ref = f"bundled:arithmetic/{split}"
    assert ref in bundled_names()
    path = resolve_path(ref)
    assert path.is_file() and path.name == f"arithmetic_{split}.jsonl"
    loaded = read_records(ref)
    assert loaded.rejects == []
    assert len(loaded.records) > 10
    assert all(r["meta"]["answer"] for r in loaded.records)


@pytest.mark.parametrize(
    ("ref", "fragment"),
    [
        ("bundled:nope/train", "no such bundled dataset (available: bundled:arithmetic/test"),
        ("bundled:arithmetic/validation", "no such bundled dataset"),
        ("/definitely/not/here.jsonl", "/definitely/not/here.jsonl: data file not found"),
    ],
)
def test_unknown_references_raise(ref, fragment):
    with pytest.raises(DataError) as e:
        read_records(ref)
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    ("suffix", "lines", "rejected"),
    [
        ("[2:5]", [3, 5], [4]),  # rows 2, 3, 4; row 3 (line 4) does not parse
        ("[:40%]", [1, 2, 3], [4]),  # 40% of 10 rows
        ("[-3:]", [8, 9, 10], []),
        ("[7:]", [8, 9, 10], []),
        ("[:]", [1, 2, 3, 5, 6, 7, 8, 9, 10], [4]),
        ("[6:2]", [], []),
    ],
)
def test_row_slices_select_rows_as_datasets_split_strings_do(tmp_path, suffix, lines, rejected):
    f = tmp_path / "rows.jsonl"
    rows = [dump({**ALPACA, "instruction": f"q{i}"}) for i in range(10)]
    rows[3] = "{not json"
    f.write_text("\n".join(rows) + "\n")
    loaded = read_records(f"{f}{suffix}")
    assert [r["meta"]["line"] for r in loaded.records] == lines
    assert [r.line for r in loaded.rejects] == rejected


def test_row_slice_of_a_bundled_set_and_a_bad_slice(tmp_path):
    tail = read_records("bundled:arithmetic/train[480:]").records
    full = read_records("bundled:arithmetic/train").records
    assert len(tail) == len(full) - 480 and tail[0]["messages"] == full[480]["messages"]
    assert resolve_path("bundled:arithmetic/train[:10]") == resolve_path("bundled:arithmetic/train")
    with pytest.raises(DataError, match=r"a row slice looks like \[start:stop\]"):
        read_records("bundled:arithmetic/train[first:last]")
    odd = tmp_path / "odd[1:2]"  # a real file whose name ends like a slice is read whole
    odd.write_text(dump(ALPACA) + "\n" + dump(ALPACA) + "\n")
    assert len(read_records(str(odd)).records) == 2


def test_directory_is_not_a_data_file(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        resolve_path(str(tmp_path))


def loaded_with(good: int, bad: int) -> LoadedRecords:
    return LoadedRecords(
        records=[{"messages": [], "meta": {}}] * good,
        rejects=[Reject("f.jsonl", i + 1, f"reason {i}") for i in range(bad)],
    )


@pytest.mark.parametrize(
    ("good", "bad", "limit", "raises"),
    [
        (10, 0, 0.0, False),
        (9, 1, 0.1, False),  # exactly at the limit passes
        (8, 2, 0.1, True),
        (1, 1, 0.5, False),
        (0, 3, 0.9, True),
        (0, 3, 1.0, False),
        (99, 1, 0.0, True),
    ],
)
def test_check_bad_fraction(good, bad, limit, raises):
    loaded = loaded_with(good, bad)
    if raises:
        with pytest.raises(DataError) as e:
            check_bad_fraction(loaded, limit, "training data")
        msg = str(e.value)
        assert msg.startswith(f"training data: {bad}/{good + bad} records unusable")
        assert f"data.max_bad_fraction={limit}" in msg
        assert "first: f.jsonl:1: reason 0" in msg
    else:
        check_bad_fraction(loaded, limit, "training data")


def test_check_bad_fraction_empty():
    with pytest.raises(DataError, match="test data: no records found"):
        check_bad_fraction(LoadedRecords(), 1.0, "test data")


def test_write_rejects(tmp_path):
    rejects = [Reject("a.jsonl", 3, "invalid JSON: x"), Reject("b.json", 10, "unknown role 'bot' — ünïcode")]
    out = tmp_path / "run" / "sub" / "rejects.jsonl"
    write_rejects(rejects, out)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == [r.to_json() for r in rejects]
    assert rows[1] == {"file": "b.json", "line": 10, "reason": "unknown role 'bot' — ünïcode"}


def test_write_rejects_empty(tmp_path):
    out = tmp_path / "rejects.jsonl"
    write_rejects([], out)
    assert out.read_text() == ""


def test_loaded_records_extend():
    a, b = loaded_with(2, 1), loaded_with(1, 2)
    a.extend(b)
    assert (len(a.records), len(a.rejects), a.total) == (3, 3, 6)


def test_bundled_names_are_resolvable():
    names = bundled_names()
    assert names
    for name in names:
        assert Path(resolve_path(name)).is_file()
