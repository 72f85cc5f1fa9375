"""Distilled reasoning traces: only verified-correct answers are kept (fake teacher with fixed texts), the output
reads back as SFT data, a real tiny-model teacher run, an OpenAI-compatible endpoint teacher, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from tests.fake_openai import ChatEndpoint, serving
from thinktune.data.reading import read_records
from thinktune.eval.reasoning import answers_match, extract_answer
from thinktune.train.distill import DistillConfig, EndpointTeacher, TeacherAnswer, distill_traces, from_text

ROOT = Path(__file__).parents[2]


def write_tasks(path: Path) -> Path:
    rows = [
        {"prompt": "What is 3 + 4?", "answer": "7"},
        {"question": "Sara had 20 dollars and spent 8. How much is left?", "answer": "12"},
        {"prompt": [{"role": "user", "content": "What is 6 * 7?"}], "answer": 42},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "answer": "4"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def think(reasoning: str, answer: str) -> str:
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


FIXED = {
    "What is 3 + 4?": [think("3 + 4 = 8", "\\boxed{8}"), think("3 + 4 = 7", "The answer is \\boxed{7}.")],
    "Sara had 20 dollars and spent 8. How much is left?": ["The answer is 12.", think("20 - 8", "12")],
    "What is 6 * 7?": [think("6 * 7 = 42, so", ""), "<think>\n6 * 7 = 42 and then I keep thinking"],
    "2+2?": [think("2 + 2 = 4", "\\boxed{4}"), think("again 4", "\\boxed{4.0}")],
}


def fake_teacher(prompts, n):
    """Fixed texts per prompt, in order: the verification logic is all that is tested."""
    return [[from_text(text) for text in FIXED[p[-1]["content"]][:n]] for p in prompts]


def test_only_verified_traces_are_kept(tmp_path):
    out = tmp_path / "traces.jsonl"
    cfg = DistillConfig(teacher="fake", n=2)
    stats = distill_traces(cfg, str(write_tasks(tmp_path / "tasks.jsonl")), out, fake_teacher, Console(quiet=True))
    assert stats["tasks"] == 4 and stats["solved"] == 3 and stats["kept"] == 3
    # 3+4: 1 wrong then kept; Sara: no reasoning, then kept; 6*7: no answer + unfinished; 2+2: first kept
    assert stats["tries"] == 2 + 2 + 2 + 1
    assert stats["failed_tries"] == {"wrong": 1, "no_reasoning": 1, "no_answer": 1, "unfinished": 1}
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    for row in rows:
        assistant = row["messages"][-1]
        assert assistant["role"] == "assistant" and assistant["reasoning_content"]
        assert answers_match(extract_answer(assistant["content"]), row["answer"])
        assert row["teacher"] == "fake" and row["attempt"] >= 1
    assert [r["attempt"] for r in rows] == [2, 2, 1]
    rejects = [json.loads(x) for x in (tmp_path / "traces.rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1 and rejects[0]["line"] == 3 and "1 no answer, 1 unfinished" in rejects[0]["reason"]
    assert json.loads((tmp_path / "traces.summary.json").read_text())["kept"] == 3
    # the traces are SFT data in the messages format: reasoning and answer land where training expects them
    sft = read_records(str(out), "auto")
    assert not sft.rejects and len(sft.records) == 3
    first = sft.records[0]["messages"]
    assert first[0]["content"] == "What is 3 + 4?" and first[1]["reasoning"] == "3 + 4 = 7"
    assert first[1]["content"] == "The answer is \\boxed{7}."


def test_keep_all_and_allow_no_reasoning(tmp_path):
    out = tmp_path / "all.jsonl"
    cfg = DistillConfig(teacher="fake", n=2, keep="all", require_reasoning=False)
    stats = distill_traces(cfg, str(write_tasks(tmp_path / "tasks.jsonl")), out, fake_teacher, Console(quiet=True))
    assert stats["kept"] == 5 and stats["tries"] == 8  # Sara ×2, 2+2 ×2 (4.0 == 4), 3+4 ×1
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    no_reasoning = [r for r in rows if "reasoning_content" not in r["messages"][-1]]
    assert len(no_reasoning) == 1 and no_reasoning[0]["messages"][-1]["content"] == "The answer is 12."


@pytest.mark.parametrize(
    "text,expected",
    [
        (think("r", "a"), TeacherAnswer("r", "a")),
        ("</think>\n\nok", TeacherAnswer(None, "ok")),  # a template pre-filled <think>, empty thinking
        ("plain", TeacherAnswer(None, "plain")),
        ("<think>\nnever closed", TeacherAnswer("never closed", "", finished=False)),
    ],
)
def test_from_text(text, expected):
    assert from_text(text) == expected


def test_real_tiny_model_teacher(tiny_model_dirs, tmp_path):
    out = tmp_path / "tiny.jsonl"
    cfg = DistillConfig(teacher=str(tiny_model_dirs["llama"]), n=2, max_new_tokens=8, batch_size=4)
    stats = distill_traces(cfg, str(write_tasks(tmp_path / "tasks.jsonl")), out, console=Console(quiet=True))
    assert stats["tasks"] == 4 and 4 <= stats["tries"] <= 8
    assert sum(stats["failed_tries"].values()) + stats["kept"] == stats["tries"]
    for row in (json.loads(x) for x in out.read_text().splitlines()):  # a random model rarely earns any
        assert answers_match(extract_answer(row["messages"][-1]["content"]), row["answer"])
    assert len((tmp_path / "tiny.rejects.jsonl").read_text().splitlines()) == 4 - stats["solved"]


class FakeOpenAI(ChatEndpoint):
    """An OpenAI-compatible chat endpoint: reasoning in `reasoning_content` (DeepSeek, vLLM) for 3 + 4, inline
    <think> for the rest; one choice per request whatever `n` says (as some servers do)."""

    model_id = "teacher-1"
    requests: list[dict] = []

    def answer(self, req):
        FakeOpenAI.requests.append(req)
        question = req["messages"][-1]["content"]
        if question == "What is 3 + 4?":
            return {"role": "assistant", "content": "\\boxed{7}", "reasoning_content": "3 + 4 = 7"}
        if question == "2+2?":
            return {"role": "assistant", "content": think("two and two", "\\boxed{4}")}
        return {"role": "assistant", "content": "The answer is 0."}


@pytest.fixture
def endpoint():
    FakeOpenAI.requests = []
    with serving(FakeOpenAI) as url:
        yield url


def test_endpoint_teacher(endpoint, tmp_path):
    out = tmp_path / "api.jsonl"
    cfg = DistillConfig(teacher=endpoint, n=2, system_prompt="Think first.", concurrency=2)
    teacher = EndpointTeacher(cfg)
    assert teacher.model == "teacher-1"  # the first model the server lists
    stats = distill_traces(cfg, str(write_tasks(tmp_path / "tasks.jsonl")), out, teacher, Console(quiet=True))
    assert stats["kept"] == 2 and stats["tries"] == 1 + 2 + 2 + 1  # answers examined until the first verified
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": "\\boxed{7}", "reasoning_content": "3 + 4 = 7"}
    assert rows[1]["messages"][-1]["reasoning_content"] == "two and two"
    assert all(r["messages"][0] == {"role": "system", "content": "Think first."} for r in FakeOpenAI.requests)
    assert {r["n"] for r in FakeOpenAI.requests} == {1, 2}  # asked for 2, got 1, asked again for the rest


def test_cli_distill_traces(tiny_model_dirs, tmp_path):
    tasks = write_tasks(tmp_path / "tasks.jsonl")
    out = tmp_path / "cli.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "thinktune",
            "distill",
            "traces",
            "--teacher",
            str(tiny_model_dirs["llama"]),
            "--data",
            str(tasks),
            "--n",
            "2",
            "--max-new-tokens",
            "6",
            "-o",
            str(out),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "traces for" in proc.stdout and "/4 tasks (" in proc.stdout
    assert out.is_file()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "thinktune",
            "distill",
            "traces",
            "--teacher",
            "x",
            "--data",
            str(tasks),
            "--n",
            "0",
            "-o",
            str(out),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert bad.returncode == 2 and "--n" in bad.stderr
