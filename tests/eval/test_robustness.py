"""Perturbations keep the reference valid; the arithmetic solver re-derives every bundled answer; the report runs."""

from __future__ import annotations

import copy
import random
import re

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from thinktune.config import EvalConfig
from thinktune.errors import ConfigError
from thinktune.eval import robustness
from thinktune.eval.reasoning import extract_answer
from thinktune.eval.robustness import (
    PERSON_NAMES,
    arithmetic_solver,
    number_words,
    perturb_numbers_with_recompute,
    reformat_numbers,
    rename_entities,
    robustness_report,
)
from thinktune.eval.runner import EvalResult
from thinktune.eval.tasks import load_tasks


def task(question: str, answer: str, reasoning: str | None = None) -> dict:
    user = {"role": "user", "content": question, "reasoning": None}
    reply = {"role": "assistant", "content": f"The answer is \\boxed{{{answer}}}.", "reasoning": reasoning}
    return {"prompt": [user], "answer": answer, "messages": [dict(user), reply], "meta": {"answer": answer}}


@pytest.fixture(scope="module")
def arithmetic() -> list[dict]:
    loaded = load_tasks("bundled:arithmetic/test")
    assert len(loaded.records) == 200 and not loaded.rejects
    return loaded.records


# --- rename_entities -------------------------------------------------------------------------------------------------


def test_rename_is_consistent_everywhere_and_keeps_the_answer():
    t = task(
        "Lena has 10 marbles. Lena gets 5 more and then gives away 3. How many marbles does Lena have now?",
        "12",
        "Lena starts with 10 marbles.\n10 + 5 = 15.",
    )
    before = copy.deepcopy(t)
    out = rename_entities(t, random.Random(0))
    assert t == before  # pure: the input is not modified
    new = out["meta"]["renamed"]["Lena"]
    assert new in PERSON_NAMES and new != "Lena"
    for m in [*out["prompt"], *out["messages"]]:
        assert "Lena" not in m["content"] + (m["reasoning"] or "")
    assert out["prompt"][0]["content"] == t["prompt"][0]["content"].replace("Lena", new)
    assert out["messages"][0]["content"].count(new) == 3
    assert out["messages"][1]["reasoning"].startswith(f"{new} starts")
    assert out["answer"] == "12" and out["meta"]["perturbation"] == "rename_entities"


def test_rename_gives_distinct_unused_names_and_keeps_names_in_the_answer():
    t = task("Ana gives Ben 3 pens and Chen 2 pens. Ben thanks Ana. Who got more pens, Ben or Chen?", "Ben")
    out = rename_entities(t, random.Random(1))
    mapping = out["meta"]["renamed"]
    assert set(mapping) == {"Ana", "Chen"}  # Ben is the answer: renaming it would invalidate the reference
    assert len(set(mapping.values())) == 2 and not set(mapping.values()) & {"Ana", "Ben", "Chen"}
    text = out["prompt"][0]["content"]
    assert text.count(mapping["Ana"]) == 2 and text.count("Ben") == 3 and out["answer"] == "Ben"


def test_rename_is_seeded():
    t = task("Mo has 4 apples. How many apples does Mo have?", "4")
    assert rename_entities(t, random.Random(7)) == rename_entities(t, random.Random(7))


@pytest.mark.parametrize("question", ["What is 3 + 4?", "How far is Mars from Earth in light minutes?", ""])
def test_rename_without_person_names_is_none(question):
    assert rename_entities(task(question, "7"), random.Random(0)) is None


def test_rename_applies_to_every_bundled_record(arithmetic):
    rng = random.Random(0)
    for t in arithmetic:
        out = rename_entities(t, rng)
        if out is None:  # the bus and rope questions have no names
            assert not any(n in t["prompt"][0]["content"] for n in PERSON_NAMES)
            continue
        assert out["answer"] == t["answer"] == arithmetic_solver(out["prompt"][0]["content"])


# --- reformat_numbers ------------------------------------------------------------------------------------------------

WORD_VALUES = {number_words(n): n for n in range(100)}


def parse_numbers(text: str) -> list[int]:
    """Every number in `text`, written as digits, grouped digits or English words, in order."""
    found = re.findall(r"\d[\d,]*\d|\d|[a-z]+(?:-[a-z]+)?", text)
    return [
        int(w.replace(",", "")) if w[0].isdigit() else WORD_VALUES[w]
        for w in found
        if w[0].isdigit() or w in WORD_VALUES
    ]


REFORMAT = [
    ("small_to_words", "Tom has 7 apples and 0 pears.", "Tom has seven apples and zero pears."),
    ("teens_and_tens", "It takes 13 or 20 or 45 days.", "It takes thirteen or twenty or forty-five days."),
    (
        "thousands_grouped",
        "The farm has 12000 sheep and 1234567 ants.",
        "The farm has 12,000 sheep and 1,234,567 ants.",
    ),
    ("hundreds_unchanged", "A rope of 150 cm", None),
    ("years_unchanged", "In 2024 it rained.", None),
    ("formula_unchanged", "What is 3 + 4 = x?", None),
    ("decimal_price_percent_unchanged", "It costs $5 or 3.5 or 50% of 1,000.", None),
    ("attached_to_words_unchanged", "Let x2 = 2x and 007 be agents.", None),
    ("end_of_sentence", "She gives away 12.", "She gives away twelve."),
]


@pytest.mark.parametrize(("text", "expected"), [r[1:] for r in REFORMAT], ids=[r[0] for r in REFORMAT])
def test_reformat_numbers_table(text, expected):
    out = reformat_numbers(task(text, "1"), random.Random(0))
    if expected is None:
        assert out is None
    else:
        assert out["prompt"][0]["content"] == out["messages"][0]["content"] == expected
        assert parse_numbers(expected) == parse_numbers(text)


def test_reformat_keeps_every_value_of_every_bundled_record(arithmetic):
    for t in arithmetic:
        out = reformat_numbers(t, random.Random(0))
        old, new = t["prompt"][0]["content"], out["prompt"][0]["content"]
        assert new != old and not re.search(r"\d", new)  # all bundled numbers are 0–99
        assert parse_numbers(new) == parse_numbers(old)
        assert out["answer"] == t["answer"] and out["messages"][1] == t["messages"][1]  # reference untouched


# --- arithmetic_solver and perturb_numbers_with_recompute ------------------------------------------------------------


def test_arithmetic_solver_reproduces_every_bundled_answer(arithmetic):
    for t in arithmetic:
        assert arithmetic_solver(t["prompt"][0]["content"]) == t["answer"], t["prompt"][0]["content"]


@pytest.mark.parametrize(
    "prompt",
    [
        "What is 3 + 4?",
        "Ana has 3 apples. Ana gets 2 more and then gives away 9. How many apples does Ana have now?",  # negative
        "Ana has 10 cards, keeps 3 and shares the rest equally among 2 friends. How many cards does each friend get?",
        "Ana has three apples. Ana gets 2 more and then gives away 1. How many apples does Ana have now?",  # words
        "Ana has 3 apples. Ben gets 2 more and then gives away 1. How many apples does Ana have now?",  # two names
    ],
)
def test_arithmetic_solver_refuses(prompt):
    assert arithmetic_solver(prompt) is None


# The six bundled templates, told apart by a phrase, each with its formula over the prompt's numbers in order.
FORMULAS = {
    "gives away": lambda a, b, c: a + b - c,
    "uses": lambda a, b, c: a * b - c,
    "already had": lambda a, b, c: a * b + c,
    "shares the rest": lambda total, extra, k: (total - extra) / k,
    "bus drives": lambda speed, hours, back: speed * hours - back,
    "rope is": lambda m, cm: m * 100 + cm,
}


def test_recomputed_numbers_give_a_consistent_new_answer(arithmetic):
    rng = random.Random(0)
    changed_answers = 0
    for t in arithmetic:
        out = perturb_numbers_with_recompute(t, rng, arithmetic_solver)
        assert out is not None
        old, new = t["prompt"][0]["content"], out["prompt"][0]["content"]
        assert new != old and re.sub(r"\d+", "#", new) == re.sub(r"\d+", "#", old)  # same wording, new numbers
        (formula,) = [f for phrase, f in FORMULAS.items() if phrase in new]
        expected = formula(*map(int, re.findall(r"\d+", new)))
        assert expected == int(expected) >= 0 and out["answer"] == str(int(expected))
        assert extract_answer(out["messages"][-1]["content"]) == out["answer"] == out["meta"]["answer"]
        assert out["messages"][:-1] == out["prompt"] and out["meta"]["original_answer"] == t["answer"]
        changed_answers += out["answer"] != t["answer"]
    assert changed_answers > 150


def test_recompute_is_none_for_prompts_the_solver_does_not_know():
    assert perturb_numbers_with_recompute(task("What is 3 + 4?", "7"), random.Random(0), arithmetic_solver) is None


# --- robustness_report -----------------------------------------------------------------------------------------------


def test_report_compares_the_same_tasks(monkeypatch, arithmetic):
    """A fake model that fails on spelled-out numbers: reformatting drops accuracy by 1, renaming by 0."""

    def fake_evaluate(model, tokenizer, tasks, cfg, system_prompt=None):
        correct = [
            not re.search(r"\b(?:two|three|four|five|six|seven|eight|nine)\b", t["prompt"][0]["content"]) for t in tasks
        ]
        samples = [{"correct": c} for c in correct]
        return EvalResult(sum(correct) / len(tasks), 0, 0, 0, None, None, len(tasks), 0.0, samples)

    monkeypatch.setattr(robustness, "evaluate", fake_evaluate)
    tasks = arithmetic[:12]
    report = robustness_report(None, None, tasks, EvalConfig(), None, ("rename_entities", "reformat_numbers"))
    assert report["original"] == 1.0 and report["n"] == 12
    assert report["reformat_numbers"] == 0.0 and report["reformat_numbers_drop"] == 1.0
    assert report["rename_entities"] == 1.0 and report["rename_entities_drop"] == 0.0
    assert 0 < report["rename_entities_n"] < 12  # bus and rope questions have no names


def test_report_on_a_tiny_model(tiny_model_dirs, arithmetic):
    model_dir = tiny_model_dirs["llama"]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    tasks = arithmetic[:4]
    report = robustness_report(model, tok, tasks, EvalConfig(max_new_tokens=4, batch_size=4), "Think step by step.")
    names = ("rename_entities", "reformat_numbers", "numbers")
    assert set(report) == {"original", "n", *names, *(f"{n}_drop" for n in names), *(f"{n}_n" for n in names)}
    assert report["n"] == 4 and report["numbers_n"] == 4 and report["reformat_numbers_n"] == 4
    for name in names:
        if report[f"{name}_n"]:
            assert 0 <= report[name] <= 1 and -1 <= report[f"{name}_drop"] <= 1
    with pytest.raises(ConfigError, match="unknown perturbation"):
        robustness_report(model, tok, tasks, EvalConfig(max_new_tokens=4), None, ("typos",))
