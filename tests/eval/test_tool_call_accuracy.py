"""Tool-call accuracy: the scorer on fixed outputs (both syntaxes), tool-call tasks from SFT records, and one run of
the evaluation runner + report on a tiny model over a small tool-call task file."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from thinktune.config import EvalConfig
from thinktune.eval.report import write_report
from thinktune.eval.runner import evaluate
from thinktune.eval.tasks import load_tasks
from thinktune.eval.tool_calls import majority_calls_correct, score_tool_calls, tool_call_summary

PARIS = {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}
LYON = {"name": "get_weather", "arguments": {"city": "Lyon"}}


def hermes(name: str, args: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>'


def deepseek(name: str, args: str) -> str:
    return (
        f"<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n{args}\n```"
        "<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
    )


THINK = "<think>\nThe user wants the weather.\n</think>\n\n"


@pytest.mark.parametrize(
    "output,reference,correct,well_formed,predicted",
    [
        (THINK + hermes("get_weather", '{"city": "Paris", "days": 2}'), [PARIS], True, True, [PARIS]),
        (hermes("get_weather", '{"days": 2,  "city":"Paris"}'), [PARIS], True, True, [PARIS]),  # key order, spacing
        (hermes("get_weather", '{"city": "Paris", "days": "2"}'), [PARIS], False, True, None),  # "2" is not 2
        (hermes("get_forecast", '{"city": "Paris", "days": 2}'), [PARIS], False, True, None),  # other name
        (THINK + deepseek("get_weather", '{"city": "Paris", "days": 2}'), [PARIS], True, True, [PARIS]),
        ("Checking. " + hermes("get_weather", '{"city": "Paris", "days": 2}'), [PARIS], True, True, [PARIS]),
        (
            hermes("get_weather", '{"city": "Lyon"}') + hermes("get_weather", '{"city": "Paris", "days": 2}'),
            [PARIS, LYON],
            False,
            True,
            [LYON, PARIS],
        ),  # same calls, other order  # fmt: skip
        (hermes("get_weather", '{"city": "Paris", "days": 2}'), [PARIS, LYON], False, True, [PARIS]),  # one missing
        (hermes("get_weather", "{city: Paris}"), [PARIS], False, False, []),  # not JSON: written but no call
        (
            "<think>\n" + hermes("get_weather", '{"city": "Paris", "days": 2}') + "\n</think>\n\nSunny.",
            [PARIS],
            False,
            False,
            [],
        ),  # a call inside the thinking is not a call  # fmt: skip
        ("<think>\nstill thinking " + hermes("get_weather", '{"city": "Paris", "days": 2}'), [PARIS], False, False, []),
        ("It is sunny in Paris.", [PARIS], False, False, []),
        ("", [PARIS], False, False, []),
    ],
)
def test_score_tool_calls(output, reference, correct, well_formed, predicted):
    score = score_tool_calls(output, reference)
    assert (score.correct, score.well_formed) == (correct, well_formed)
    if predicted is not None:
        assert score.predicted == predicted
    assert bool(score.errors) == ("{city" in output)


@pytest.mark.parametrize(
    "predictions,correct",
    [
        ([[PARIS], [PARIS], [LYON]], True),
        ([[LYON], [PARIS], [LYON]], False),
        ([[LYON], [PARIS]], False),  # a tie goes to the calls seen first
        ([[], [], [PARIS]], True),  # no call is no vote
        ([[], []], False),
    ],
)
def test_majority_calls(predictions, correct):
    assert majority_calls_correct(predictions, [PARIS]) is correct


def test_summary_only_when_a_task_has_reference_calls():
    assert tool_call_summary([{"correct": True}]) == {}
    samples = [{"tool_call_correct": True}, {"tool_call_correct": False}, {"correct": True}]
    assert tool_call_summary(samples) == {"tool_call_accuracy": 0.5, "tool_call_tasks": 2}


# -- tasks and a run of the runner --------------------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def call_record(city: str) -> dict:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
    }
    return {
        "messages": [
            {"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
        ],
        "tools": TOOLS,
    }


ARITHMETIC = {
    "messages": [
        {"role": "user", "content": "2 + 3?"},
        {"role": "assistant", "content": "<think>\n2 + 3 = 5\n</think>\n\n\\boxed{5}"},
    ]
}


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "tools.jsonl"
    rows = [call_record("Paris"), call_record("Lyon"), call_record("Oslo"), ARITHMETIC]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tool_call_tasks_from_sft_records(task_file):
    loaded = load_tasks(str(task_file))
    assert not loaded.rejects
    paris, *_, arithmetic = loaded.records
    assert paris["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert paris["tools"] == TOOLS and [m["role"] for m in paris["prompt"]] == ["user"]
    assert json.loads(paris["answer"]) == paris["tool_calls"]
    assert "tool_calls" not in arithmetic and arithmetic["answer"] == "5"


@pytest.fixture(scope="module")
def tiny(tiny_model_dirs):
    d = tiny_model_dirs["llama"]
    return AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d)


def test_eval_reports_tool_call_accuracy(tiny, task_file, tmp_path):
    model, tok = tiny
    tasks = load_tasks(str(task_file)).records
    result = evaluate(model, tok, tasks, EvalConfig(max_new_tokens=6, batch_size=4))
    pairs = zip(result.samples, tasks, strict=True)
    expected = [score_tool_calls(s["output"], t["tool_calls"]).correct for s, t in pairs if "tool_calls" in t]
    assert result.extra["tool_call_tasks"] == 3
    assert result.extra["tool_call_accuracy"] == sum(expected) / 3
    assert [s["tool_call_correct"] for s in result.samples[:3]] == expected
    assert "tool_call_correct" not in result.samples[3]
    assert result.loss is not None  # the reference calls have a held-out loss too

    js, md = write_report(result, tmp_path / "eval", "tools", "Tool calls")
    headline = json.loads(js.read_text())["headline"]
    assert headline["tool_call_accuracy"] == result.extra["tool_call_accuracy"] and headline["tool_call_tasks"] == 3
    assert "| tool_call_accuracy |" in md.read_text() and "| tool_call_tasks | 3 |" in md.read_text()


def test_k_samples_of_tool_call_tasks(tiny, task_file):
    model, tok = tiny
    tasks = load_tasks(str(task_file), limit=2).records
    result = evaluate(model, tok, tasks, EvalConfig(num_samples=2, max_new_tokens=4, batch_size=4))
    assert {"pass@2", "maj@2", "tool_call_accuracy"} <= set(result.headline())
    assert all(len(s["samples"]) == 2 for s in result.samples)


def test_no_reference_calls_no_tool_call_fields(tiny):
    model, tok = tiny
    tasks = load_tasks("bundled:arithmetic/test", limit=1).records
    result = evaluate(model, tok, tasks, EvalConfig(max_new_tokens=2))
    assert "tool_call_accuracy" not in result.headline()
