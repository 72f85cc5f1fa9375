"""`thinktune data validate|stats|inspect|clean|split`: outputs, files written, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from thinktune.cli import app

GOOD = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think>1+1=2</think>2"}]}
runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, ["data", *map(str, args)], env={"COLUMNS": "200", "NO_COLOR": "1"})


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    return str(path)


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for f in fragments:
        assert f in lines[0]


@pytest.mark.parametrize("command", ["validate", "stats", "inspect", "clean", "split"])
def test_help_has_an_example(command):
    r = cli(command, "--help")
    assert r.exit_code == 0 and "Example" in r.output and f"thinktune data {command}" in r.output


def test_stats(tiny_model_dirs, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, {"question": "Привет?", "answer": "Да"}, "{bad"])
    png = tmp_path / "h.png"
    r = cli("stats", path, "--model", tiny_model_dirs["llama"], "--max-length", 20, "--png", png)
    assert r.exit_code == 0, r.output
    out = r.output
    assert "3 records, 1 rejected while reading" in out and "1 × invalid JSON" in out
    assert "duplicates 1 exact (33.3%)" in out and "cyrillic 33%" in out
    assert "reasoning  2 of 3 records" in out and "too long" in out and "token length histogram:" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    js = cli("stats", path, "--model", tiny_model_dirs["llama"], "--json", "--no-png")
    data = json.loads(js.output)
    assert data["records"] == 3 and data["duplicates"] == 1 and data["png"] is None and data["tokens"]["count"] == 3


def test_inspect_plain_markers_and_no_thinking(tiny_model_dirs, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["{bad", GOOD, {"instruction": "Say hi", "output": "hi"}])
    r = cli("inspect", path, "--model", tiny_model_dirs["llama"], "-n", 5)
    assert r.exit_code == 0, r.output
    assert f"── {path}:2 · " in r.output and f"{path}:3" in r.output
    assert "[[<think>\n1+1=2\n</think>\n\n2<|im_end|>]]" in r.output
    assert "<|im_start|>user\n1+1?<|im_end|>" in r.output  # prompt unmarked
    r = cli("inspect", path, "--model", tiny_model_dirs["llama"], "-n", 1, "--no-thinking")
    assert "[[2<|im_end|>]]" in r.output and "1+1=2" not in r.output and f"{path}:3" not in r.output


def test_inspect_color_on_request(tiny_model_dirs, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    args = ["data", "inspect", path, "--model", str(tiny_model_dirs["llama"]), "--color"]
    r = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "\x1b[1;32m" in r.output and "[[" not in r.output  # bold green ANSI even into a pipe


def test_inspect_preference_shows_both_sides(tiny_model_dirs, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "2+2?", "chosen": "four", "rejected": "five"}])
    r = cli("inspect", path, "--kind", "preference", "--model", tiny_model_dirs["llama"])
    assert r.exit_code == 0, r.output
    assert "(chosen)" in r.output and "[[four<|im_end|>]]" in r.output and "[[five<|im_end|>]]" in r.output


def test_clean_writes_output_and_rejects_with_rules(tmp_path):
    rows = [
        {"question": "Email me: ann@example.com", "answer": "Sure, I will write to you."},
        {"question": "Email me: ann@example.com", "answer": "Sure, I will write to you."},
        {"question": "What is 2+2?", "answer": "caf\ufffd"},
        "{bad",
    ]
    path = write_jsonl(tmp_path / "raw.jsonl", rows)
    out = tmp_path / "clean.jsonl"
    r = cli("clean", path, "-o", out, "--pii")
    assert r.exit_code == 0, r.output
    assert "kept 1 of 4 records" in r.output and "email 1" in r.output
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    assert kept[0]["messages"][0]["content"] == "Email me: [EMAIL]" and kept[0]["origin"] == f"{path}:1"
    rejects = [json.loads(x) for x in (tmp_path / "clean.rejects.jsonl").read_text().splitlines()]
    assert [(x["line"], x.get("rule")) for x in rejects] == [(2, "exact_duplicate"), (3, "broken_encoding"), (4, None)]
    assert all(x["file"] == path for x in rejects)


def test_split_writes_parts_without_leakage(tmp_path):
    rows = [{"question": f"Question number {i}: what is {i} plus {i}?", "answer": str(2 * i)} for i in range(50)]
    rows += [{"question": "Question number 7: what is 7 plus 7?", "answer": "14"}]  # duplicate of row 8
    path = write_jsonl(tmp_path / "all.jsonl", rows)
    r = cli("split", path, "-o", tmp_path / "out", "--ratio", "train=0.8,test=0.2", "--seed", 3)
    assert r.exit_code == 0, r.output
    parts = {
        name: [json.loads(x) for x in (tmp_path / "out" / f"{name}.jsonl").read_text().splitlines()]
        for name in ("train", "test")
    }
    assert len(parts["train"]) + len(parts["test"]) == 51
    q = {name: [x["messages"][0]["content"] for x in part] for name, part in parts.items()}
    assert not set(q["train"]) & set(q["test"])
    assert "50 groups" in r.output


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["validate", "missing.jsonl"], ["missing.jsonl: data file not found"]),
        (["validate", "bundled:arithmetic/test", "--kind", "dpo"], ["unknown record kind 'dpo'"]),
        (["validate", "bundled:arithmetic/test", "--kind", "preference", "--format", "alpacca"], ["--format alpacca"]),
        (
            ["validate", "bundled:arithmetic/test", "--columns", "response=a"],
            ["--columns", "needs 'messages' or 'prompt'"],
        ),
        (["validate", "bundled:arithmetic/test", "--columns", "{bad json"], ["--columns"]),
        (["split", "bundled:arithmetic/test", "-o", "x", "--ratio", "1.5"], ["--ratio '1.5'"]),
        (["clean", "bundled:arithmetic/test", "-o", "x.jsonl", "--threshold", "2"], ["near_dedup_threshold"]),
        (["clean", "bundled:arithmetic/test", "-o", "x.jsonl", "--pii-kinds", "email,dna"], ["pii_kinds"]),
        (["stats", "bundled:arithmetic/test", "--model", "/no/such/model"], ["/no/such/model"]),
    ],
)
def test_user_errors_are_one_line(tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    one_line_error(cli(*args), *fragments)


def test_validate_kinds_and_columns(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"q": "2+2?", "good": "4", "bad": "5"}, {"q": "x", "good": "y"}])
    r = cli("validate", path, "--kind", "preference", "--columns", "prompt=q,chosen=good,rejected=bad")
    assert r.exit_code == 1
    assert f"{path}: 1 usable, 1 rejected" in r.output and f"{path}:2: column 'bad' (rejected) is missing" in r.output


def test_no_traceback_on_garbage_in_a_subprocess(tmp_path):
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b'\xff\xfe\x00garbage\n{"messages": 5}\n\x89PNG\r\n')
    parquet = tmp_path / "fake.parquet"
    parquet.write_text("not parquet")
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    run = [sys.executable, "-m", "thinktune", "data"]
    r = subprocess.run([*run, "validate", str(junk)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    assert f"{junk}:1: invalid UTF-8" in r.stdout and f"{junk}:2: field 'messages' must be a non-empty list" in r.stdout
    r = subprocess.run(
        [*run, "clean", str(parquet), "-o", "o.jsonl"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not a readable Parquet file" in r.stderr
