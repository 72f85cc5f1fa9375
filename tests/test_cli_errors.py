"""The CLI in a subprocess: help texts with examples, user errors as one line with exit code 2, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GOOD = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think>1+1=2</think>2"}]}


def run_cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "THINKTUNE_HOME": str(cwd / ".thinktune"), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "thinktune", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_user_error(r: subprocess.CompletedProcess, *fragments: str) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    for f in fragments:
        assert f in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "command",
    [["train"], ["eval"], ["chat"], ["data", "validate"], ["doctor"]],
    ids=["train", "eval", "chat", "data-validate", "doctor"],
)
def test_help_has_an_example(tmp_path, command):
    r = run_cli([*command, "--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Example" in r.stdout
    assert f"thinktune {' '.join(command)}" in r.stdout


def test_top_level_help_lists_commands(tmp_path):
    r = run_cli(["--help"], tmp_path)
    assert r.returncode == 0
    for name in ("train", "eval", "chat", "data", "doctor"):
        assert name in r.stdout


def test_train_missing_config(tmp_path):
    r = run_cli(["train", "--config", "missing.yaml"], tmp_path)
    assert_one_line_user_error(r, "missing.yaml: config file not found")


def test_train_unknown_key_names_closest(tmp_path):
    r = run_cli(["train", "--set", "train.learnin_rate=1"], tmp_path)
    assert_one_line_user_error(r, "unknown key 'train.learnin_rate'", "did you mean 'train.learning_rate'")


def test_train_bad_yaml_file(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("name: x\ntrain:\n  batch_size: abc\n")
    r = run_cli(["train", "-c", str(cfg)], tmp_path)
    assert_one_line_user_error(r, f"{cfg}:3: train.batch_size")


def test_data_validate_reports_bad_lines(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text(
        "\n".join(
            [
                json.dumps(GOOD),
                "{broken",
                json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
                "",
                json.dumps(GOOD),
            ]
        )
        + "\n"
    )
    r = run_cli(["data", "validate", str(data)], tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    assert "2 usable, 2 rejected, 2 with reasoning" in r.stdout
    assert f"{data}:2: invalid JSON" in r.stdout
    assert f"{data}:3: no assistant message to learn from" in r.stdout


def test_data_validate_bundled_ok(tmp_path):
    r = run_cli(["data", "validate", "bundled:arithmetic/train"], tmp_path)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "0 rejected" in r.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["data", "validate", "nope.jsonl"], "nope.jsonl: data file not found"),
        (["data", "validate", "bundled:nope"], "no such bundled dataset"),
        (["data", "validate", "bundled:arithmetic/test", "--format", "csv"], "--format csv: unknown format"),
    ],
)
def test_data_validate_user_errors(tmp_path, args, fragment):
    assert_one_line_user_error(run_cli(args, tmp_path), fragment)


def test_eval_nonexistent_model(tmp_path):
    r = run_cli(["eval", "--model", "/nonexistent/dir"], tmp_path)
    assert_one_line_user_error(r, "/nonexistent/dir")
