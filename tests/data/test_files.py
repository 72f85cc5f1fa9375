"""Every input container (JSONL, JSON, CSV, TSV, Parquet, `datasets` dirs) and every way a file can be broken.

Bad input never raises past the reader: a row becomes a reject naming file, line and field, or a whole unreadable
file becomes one DataError line.
"""

from __future__ import annotations

import json
import tracemalloc

import pytest

from thinktune.data.reading import iter_raw, iter_records, read_records
from thinktune.data.spec import ColumnMap, DatasetSpec
from thinktune.errors import DataError

GOOD = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think>1+1=2</think>2"}]}


def dump(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


def where(loaded):
    return [r["meta"]["line"] for r in loaded.records], [(r.line, r.reason) for r in loaded.rejects]


def test_jsonl_bad_utf8_bom_crlf(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(
        b"\xef\xbb\xbf"
        + dump(GOOD).encode()
        + b"\r\n"  # 1: BOM + CRLF
        + b'{"instruction": "caf\xe9", "output": "x"}\r\n'  # 2: latin-1 byte
        + b"\r\n"  # 3: blank
        + dump({"question": "q", "answer": "a"}).encode()
        + b"\n"  # 4
        + b'{"messages": [}\n'  # 5
        + dump({"messages": []}).encode()  # 6: no trailing newline
    )
    records, rejects = where(read_records(str(p)))
    assert records == [1, 4]
    assert rejects[0] == (2, "invalid UTF-8 (byte 0xe9 at byte 21 of the line)")
    assert rejects[1][0] == 5 and rejects[1][1].startswith("invalid JSON")
    assert rejects[2] == (6, "field 'messages' must be a non-empty list")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}]}, "messages[1]: content"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]},
            "messages[1]: missing field 'content'",
        ),
        ({"instruction": 1, "output": "x"}, "field 'instruction' must be a string"),
        ({"conversations": [{"from": "human"}]}, "conversations[0] needs 'from' and 'value'"),
        ("just a string", "record must be a JSON object, got str"),
        (None, "record must be a JSON object, got NoneType"),
    ],
)
def test_mistyped_fields_are_named(tmp_path, row, reason):
    p = tmp_path / "x.jsonl"
    p.write_text(dump(GOOD) + "\n" + dump(row) + "\n")
    loaded = read_records(str(p))
    assert len(loaded.records) == 1
    assert [(r.file, r.line) for r in loaded.rejects] == [(str(p), 2)]
    assert reason in loaded.rejects[0].reason


def test_json_array_bad_utf8_item_and_jsonl_hint(tmp_path):
    p = tmp_path / "a.json"
    p.write_bytes(b"[\n" + dump(GOOD).encode() + b',\n{"instruction": "\xff", "output": "o"}\n]\n')
    assert where(read_records(str(p))) == ([2], [(3, "invalid UTF-8")])
    q = tmp_path / "lines.json"
    q.write_text(dump(GOOD) + "\n" + dump(GOOD) + "\n")
    with pytest.raises(DataError, match=r"lines.json:2: invalid JSON \(Extra data\) — one record per line\?"):
        read_records(str(q))


def test_csv_rows_line_numbers_and_errors(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes(
        "\ufeffquestion,answer,topic\n".encode()  # 1 header with BOM
        + b"2+2?,4,math\n"  # 2
        + b'"multi\nline",5,x\n'  # 3-4: a quoted newline
        + b"\n"  # 5 blank
        + b"only,two\n"  # 6 wrong width
        + b"caf\xe9?,6,x\n"  # 7 bad UTF-8
        + b",7,x\n"  # 8 empty question
        + b"ok?,8,y\r\n"  # 9 CRLF
    )
    loaded = read_records(str(p))
    assert [(r["meta"]["line"], r["messages"][0]["content"]) for r in loaded.records] == [
        (2, "2+2?"),
        (3, "multi\nline"),
        (9, "ok?"),
    ]
    assert loaded.records[0]["meta"] == {
        "answer": "4",
        "topic": "math",
        "format": "question_answer",
        "source": str(p),
        "line": 2,
    }
    assert [(r.line, r.reason) for r in loaded.rejects] == [
        (6, "CSV row has 2 fields, the header has 3"),
        (7, "invalid UTF-8"),
        (8, "empty question"),
    ]


def test_csv_json_cells_and_column_mapping(tmp_path):
    p = tmp_path / "d.tsv"
    conv = dump([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    p.write_text(f"messages\tq\ta\n{conv}\tx\ty\n")
    assert read_records(str(p)).records[0]["messages"][1]["content"] == "yo"
    mapped = read_records(DatasetSpec(path=str(p), columns=ColumnMap(prompt="q", response="a")))
    assert mapped.records[0]["messages"][0]["content"] == "x"


def test_parquet_row_numbers(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [GOOD, {"messages": [{"role": "user", "content": "q"}]}, GOOD]
    pq.write_table(
        pa.Table.from_pylist([{"messages": r["messages"], "id": i} for i, r in enumerate(rows)]), tmp_path / "d.parquet"
    )
    loaded = read_records(str(tmp_path / "d.parquet"))
    assert [(r["meta"]["line"], r["meta"]["id"]) for r in loaded.records] == [(1, 0), (3, 2)]
    assert [(r.line, r.reason) for r in loaded.rejects] == [(2, "no assistant message to learn from")]


def test_corrupt_parquet_is_one_error(tmp_path):
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="bad.parquet: not a readable Parquet file"):
        read_records(str(p))


def test_datasets_directory_and_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_list([{"question": "q1", "answer": "a1"}, {"question": "", "answer": "a2"}])
    ds.save_to_disk(str(tmp_path / "single"))
    loaded = read_records(str(tmp_path / "single"))
    assert where(loaded) == ([1], [(2, "empty question")])

    DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dict"))
    assert len(read_records(DatasetSpec(path=str(tmp_path / "dict"), split="test")).records) == 1
    with pytest.raises(DataError, match="choose a split with `split` \\(available: train, test\\)"):
        read_records(str(tmp_path / "dict"))


def test_unknown_format_for_kind_is_one_error(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(dump(GOOD) + "\n")
    with pytest.raises(DataError, match="format csv: unknown format for sft data"):
        read_records(DatasetSpec(path=str(p), format="csv"))
    assert len(read_records(str(p), kind="task").rejects) == 1  # no answer field: a reject, not an exception


def test_binary_garbage_never_raises(tmp_path):
    p = tmp_path / "junk.jsonl"
    p.write_bytes(bytes(range(256)) * 40 + b"\n\x00\x00{\n")
    loaded = read_records(str(p))
    assert loaded.records == [] and len(loaded.rejects) >= 1
    assert all(r.file == str(p) and r.line >= 1 for r in loaded.rejects)


def test_jsonl_is_streamed_not_read_whole(tmp_path):
    """~50 MB of JSONL: iterating keeps Python memory bounded (a few MB), and line numbers stay exact."""
    p = tmp_path / "big.jsonl"
    reasoning = "Let me think about this carefully. " * 140  # ~5 kB per record
    line = dump(
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "reasoning_content": reasoning},
            ]
        }
    )
    n = 50_000_000 // len(line)
    with open(p, "w") as f:
        for _ in range(n):
            f.write(line + "\n")
        f.write("{broken\r\n")
    assert p.stat().st_size > 45_000_000

    tracemalloc.start()
    count, last_reject = 0, None
    for item in iter_records(str(p)):
        if isinstance(item, dict):
            count += 1
        else:
            last_reject = item
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == n and last_reject.line == n + 1
    assert peak < 10_000_000, f"peak Python memory {peak / 1e6:.1f} MB while streaming a 50 MB file"


def test_iter_raw_is_lazy(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(dump(GOOD) + "\n" + "{bad\n")
    rows = iter_raw(p)
    assert next(rows)[0] == 1  # a generator: nothing beyond the first line needed to be read
