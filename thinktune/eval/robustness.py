"""Robustness: does accuracy hold when a question's surface changes? (seed 003 robustness)

Each perturbation maps a task record ({prompt, answer, messages, meta}, see `thinktune.eval.tasks`) to a new one whose
reference answer is still right, or to None when it does not apply to that task:

- `rename_entities`: person names swapped for other names, consistently; answer unchanged.
- `reformat_numbers`: numbers written differently with the same value ("7" → "seven", "12000" → "12,000").
- `perturb_numbers_with_recompute`: new numbers, and a caller-given solver re-derives the answer. Changing numbers
  cannot keep a reference valid in general, so only tasks whose wording a solver understands get this one;
  `arithmetic_solver` understands the bundled arithmetic task (thinktune/data/bundled/arithmetic.py).

`robustness_report` evaluates the original tasks and each perturbed set and reports the accuracy drops.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from thinktune.config import EvalConfig
from thinktune.errors import ConfigError
from thinktune.eval.runner import evaluate

Task = dict[str, Any]
Solver = Callable[[str], str | None]
Perturbation = Callable[[Task, random.Random], Task | None]

# First names only: without named-entity recognition a capitalised word could be a place or a constant ("Mars",
# "Earth"), and renaming it could change the answer. The first 14 are the bundled task's names.
PERSON_NAMES = [
    *("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena", "Mo", "Nia"),
    *("Alice", "Bob", "Carol", "Dave", "Emma", "Frank", "Grace", "Henry", "Jack", "James", "John", "Kate", "Liam"),
    *("Lucy", "Mark", "Mary", "Mike", "Noah", "Olivia", "Paul", "Peter", "Sam", "Sara", "Sarah", "Tom", "Tim"),
    *("Zara", "Omar", "Priya", "Yusuf", "Ines", "Tariq", "Sofia", "Marek", "Aiko", "Bruno", "Leila", "Nils", "Ruth"),
    *("Kwame", "Mei", "Pablo", "Greta", "Rafi", "Uma", "Viktor", "Wanjiru", "Xavier", "Yara", "Oskar", "Farah"),
]

ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen"
).split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()

# A standalone integer: not part of a word ("x2", "2x"), a decimal, an already grouped number, a price or a percentage.
STANDALONE_INT = re.compile(r"(?<![\w.,$€£\\])\d+(?![\w%]|[.,]\d)")
# Next to these a number is part of a formula, where "three + four" would read oddly: leave it as digits.
MATH_NEIGHBOURS = set("+-*/=^×÷<>{}\\$%|_·")


def number_words(n: int) -> str:
    """English words for 0–99: 7 → 'seven', 45 → 'forty-five'."""
    if not 0 <= n < 100:
        raise ValueError(f"{n} is outside 0–99")
    if n < 20:
        return ONES[n]
    tens, ones = divmod(n, 10)
    return TENS[tens] + (f"-{ONES[ones]}" if ones else "")


def _map_texts(task: Task, fn: Callable[[str], str], roles: tuple[str, ...] | None = None) -> Task:
    """A copy of `task` with `fn` applied to the content (and reasoning) of its messages, prompt and reference alike."""

    def one(m: dict[str, Any]) -> dict[str, Any]:
        if roles is not None and m["role"] not in roles:
            return dict(m)
        out = {**m, "content": fn(m["content"])}
        if out.get("reasoning"):
            out["reasoning"] = fn(out["reasoning"])
        return out

    return {**task, "prompt": [one(m) for m in task["prompt"]], "messages": [one(m) for m in task["messages"]]}


def _user_text(task: Task) -> str:
    return "\n".join(m["content"] for m in task["prompt"] if m["role"] == "user")


def _tagged(task: Task, name: str, **extra: Any) -> Task:
    return {**task, "meta": {**task.get("meta", {}), "perturbation": name, **extra}}


def rename_entities(task: Task, rng: random.Random) -> Task | None:
    """Person names in the user prompt → other names, every occurrence, in every message. None if there are none.

    A name that occurs in the reference answer is kept, so the answer stays valid without being rewritten."""
    text = _user_text(task)
    found = list(dict.fromkeys(w for w in re.findall(r"\b[A-Z][a-z]+\b", text) if w in PERSON_NAMES))
    answer_words = set(re.findall(r"\w+", task["answer"].lower()))
    found = [w for w in found if w.lower() not in answer_words]
    if not found:
        return None
    in_use = {w for m in task["messages"] for w in re.findall(r"\b[A-Z]\w*", m["content"] + (m.get("reasoning") or ""))}
    pool = [n for n in PERSON_NAMES if n not in in_use]
    if len(pool) < len(found):
        return None
    mapping = dict(zip(found, rng.sample(pool, len(found)), strict=True))
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, found)) + r")\b")
    renamed = _map_texts(task, lambda s: pattern.sub(lambda m: mapping[m.group(1)], s))
    return _tagged(renamed, "rename_entities", renamed=mapping)


def _reformat_one(text: str, m: re.Match) -> str:
    digits = m.group(0)
    before, after = text[: m.start()].rstrip()[-1:], text[m.end() :].lstrip()[:1]
    if before in MATH_NEIGHBOURS or after in MATH_NEIGHBOURS or (len(digits) > 1 and digits[0] == "0"):
        return digits
    n = int(digits)
    if n < 100:
        return number_words(n)
    if n >= 1000 and not 1900 <= n < 2100:  # 1900–2099 are likely years: "in 2,024" would be wrong
        return f"{n:,}"
    return digits


def reformat_numbers(task: Task, rng: random.Random) -> Task | None:
    """Integers in user messages rewritten with the same value: 0–99 as words, ≥1000 with thousands separators.

    Deterministic; `rng` is accepted so that every perturbation has the same signature. None if nothing changed."""

    def rewrite(s: str) -> str:
        return STANDALONE_INT.sub(lambda m: _reformat_one(s, m), s)

    out = _map_texts(task, rewrite, roles=("user",))
    return _tagged(out, "reformat_numbers") if _user_text(out) != _user_text(task) else None


def perturb_numbers_with_recompute(task: Task, rng: random.Random, solver: Solver, attempts: int = 50) -> Task | None:
    """New integers in the last user message; `solver(new prompt)` gives the new reference answer.

    Each integer is redrawn between half and twice its value (at least 2 if it was). A solver returns None for a
    prompt it does not understand or whose numbers make no sense (a negative count, an uneven share), and we draw
    again, up to `attempts` times. The reference reasoning no longer fits the new numbers, so the reference turn
    (used for the held-out loss) becomes the bare answer."""
    last = max((i for i, m in enumerate(task["prompt"]) if m["role"] == "user"), default=None)
    if last is None:
        return None
    text = task["prompt"][last]["content"]
    if solver(text) is None or not STANDALONE_INT.search(text):
        return None

    def redraw(m: re.Match) -> str:
        v = int(m.group(0))
        low = 1 if v < 2 else max(2, v // 2)  # "among 1 friends" would break the wording's plural
        while (x := rng.randint(low, max(3, 2 * v))) == v:
            pass
        return str(x)

    for _ in range(attempts):
        new_text = STANDALONE_INT.sub(redraw, text)
        answer = solver(new_text)
        if answer is None:
            continue
        prompt = [dict(m) for m in task["prompt"]]
        prompt[last]["content"] = new_text
        reference = {"role": "assistant", "content": f"The answer is \\boxed{{{answer}}}.", "reasoning": None}
        meta = {**task.get("meta", {}), "answer": answer}
        out = {**task, "prompt": prompt, "answer": answer, "messages": [*prompt, reference], "meta": meta}
        return _tagged(out, "numbers", original_answer=task["answer"])
    return None


_NAME = r"(?P<name>[A-Z][\w'-]*)"
_N = r"(?P<{}>\d+)"
# The six templates of thinktune/data/bundled/arithmetic.py, word for word, each with its answer (None: no answer).
_TEMPLATES: list[tuple[str, Callable[[dict[str, int]], int | None]]] = [
    (
        rf"{_NAME} has {_N.format('a')} (?P<item>[a-z]+)\. (?P=name) gets {_N.format('b')} more and then gives away "
        rf"{_N.format('c')}\. How many (?P=item) does (?P=name) have now\?",
        lambda v: v["a"] + v["b"] - v["c"],
    ),
    (
        rf"{_NAME} has {_N.format('a')} (?P<box>[a-z]+) with {_N.format('b')} (?P<item>[a-z]+) in each\. (?P=name) "
        rf"uses {_N.format('c')} of them\. How many (?P=item) are left\?",
        lambda v: v["a"] * v["b"] - v["c"],
    ),
    (
        rf"{_NAME} buys {_N.format('a')} (?P<box>[a-z]+) of (?P<item>[a-z]+) with {_N.format('b')} in each, and "
        rf"already had {_N.format('c')}\. How many (?P=item) does (?P=name) have\?",
        lambda v: v["a"] * v["b"] + v["c"],
    ),
    (
        rf"{_NAME} has {_N.format('total')} (?P<item>[a-z]+), keeps {_N.format('extra')} and shares the rest equally "
        rf"among {_N.format('k')} friends\. How many (?P=item) does each friend get\?",
        lambda v: (v["total"] - v["extra"]) // v["k"] if v["k"] and (v["total"] - v["extra"]) % v["k"] == 0 else None,
    ),
    (
        rf"A bus drives {_N.format('speed')} km each hour for {_N.format('hours')} hours, then {_N.format('back')} km "
        rf"back\. How far is it from the start\?",
        lambda v: v["speed"] * v["hours"] - v["back"],
    ),
    (
        rf"A rope is {_N.format('m')} meters and {_N.format('cm')} centimeters long\. How many centimeters is that in "
        rf"total\?",
        lambda v: v["m"] * 100 + v["cm"],
    ),
]
ARITHMETIC_TEMPLATES = [(re.compile(p), solve) for p, solve in _TEMPLATES]


def arithmetic_solver(prompt: str) -> str | None:
    """The answer to a bundled arithmetic question, re-derived from its numbers; None for any other wording, or when
    the numbers make the story impossible (giving away more than one has, an uneven share)."""
    for pattern, solve in ARITHMETIC_TEMPLATES:
        m = pattern.fullmatch(prompt.strip())
        if m:
            answer = solve({k: int(v) for k, v in m.groupdict().items() if v.isdigit()})
            return str(answer) if answer is not None and answer >= 0 else None
    return None


def perturbation_registry(solver: Solver = arithmetic_solver) -> dict[str, Perturbation]:
    """Name → perturbation, as `robustness_report` names them."""
    return {
        "rename_entities": rename_entities,
        "reformat_numbers": reformat_numbers,
        "numbers": lambda task, rng: perturb_numbers_with_recompute(task, rng, solver),
    }


def robustness_report(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[Task],
    eval_cfg: EvalConfig,
    system_prompt: str | None = None,
    perturbations: tuple[str, ...] = ("rename_entities", "reformat_numbers", "numbers"),
    seed: int = 0,
    solver: Solver = arithmetic_solver,
) -> dict[str, float | int | None]:
    """{"original": accuracy, "n": tasks, and per perturbation "<name>": accuracy on the perturbed tasks,
    "<name>_drop": original minus perturbed accuracy, "<name>_n": how many tasks it applied to}.

    The drop compares the same tasks: original accuracy is taken over the tasks the perturbation applied to. A
    perturbation that applies to no task reports None."""
    registry = perturbation_registry(solver)
    unknown = [p for p in perturbations if p not in registry]
    if unknown:
        raise ConfigError(f"unknown perturbation(s) {', '.join(unknown)}; available: {', '.join(registry)}")
    original = evaluate(model, tokenizer, tasks, eval_cfg, system_prompt)
    report: dict[str, float | int | None] = {"original": original.accuracy, "n": len(tasks)}
    for name in perturbations:
        rng = random.Random(seed)
        pairs = [(i, p) for i, t in enumerate(tasks) if (p := registry[name](t, rng)) is not None]
        report[f"{name}_n"] = len(pairs)
        if not pairs:
            report[name] = report[f"{name}_drop"] = None
            continue
        result = evaluate(model, tokenizer, [p for _, p in pairs], eval_cfg, system_prompt)
        before = sum(original.samples[i]["correct"] for i, _ in pairs) / len(pairs)
        report[name] = result.accuracy
        report[f"{name}_drop"] = before - result.accuracy
    return report
