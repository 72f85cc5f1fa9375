"""Verifiable rewards for reasoning RL, by name: a registry plus user functions given as `pkg.module:function`.

    grpo: {rewards: [accuracy, format], reward_weights: [1.0, 0.2]}
    grpo: {rewards: [accuracy, my_rewards.math:units_ok]}          # any importable function

A reward function is `fn(completion: Completion, task: dict) -> float`; `task` is the canonical task record
({"prompt", "answer", "meta"}). Add a built-in = one function + `@register("name")`.
"""

from __future__ import annotations

import importlib
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from thinktune.errors import ConfigError
from thinktune.eval.reasoning import answers_match, parse_output


@dataclass(frozen=True)
class Completion:
    """One sampled answer as a reward function sees it."""

    text: str  # decoded, special tokens removed
    n_tokens: int  # generated tokens, the end-of-turn token included
    max_tokens: int  # the generation budget (grpo.max_completion_length)
    truncated: bool  # stopped by the budget, not by an end-of-turn token


RewardFn = Callable[[Completion, dict[str, Any]], float]
REWARDS: dict[str, RewardFn] = {}


def register(name: str, registry: dict[str, Callable] = REWARDS) -> Callable[[RewardFn], RewardFn]:
    def add(fn):
        registry[name] = fn
        return fn

    return add


@register("accuracy")
def accuracy_reward(completion: Completion, task: dict[str, Any]) -> float:
    """1 when the extracted final answer matches the reference, by the evaluation's own checker (`answers_match`:
    math-verify on the whole answer), so a reward earned in training is accuracy in `thinktune eval`."""
    return float(answers_match(parse_output(completion.text).answer, task["answer"]))


@register("format")
def format_reward(completion: Completion, task: dict[str, Any]) -> float:
    """1 for the R1 format: a closed <think> block, then the answer in \\boxed{} (DeepSeek-R1, §2.2.2)."""
    return float(parse_output(completion.text).format_ok)


# "a op b = c" in the reasoning, each operand optionally followed by one word ("8 crates × 9 coins = 72 coins")
_NUM = r"(-?\d+(?:\.\d+)?)"
EQUATION = re.compile(_NUM + r"(?:\s+[^\W\d]+)?\s*([+\-−×x*÷/])\s*" + _NUM + r"(?:\s+[^\W\d]+)?\s*=\s*" + _NUM)
OPS = {
    **dict.fromkeys("+", operator.add),
    **dict.fromkeys("-−", operator.sub),
    **dict.fromkeys("×x*", operator.mul),
    **dict.fromkeys("÷/", operator.truediv),
}


def equation_steps(text: str) -> list[tuple[int, bool]]:
    """Every `a op b = c` step written in the text: (character offset just after c, whether it is exactly right —
    fractions, not floats; ÷ 0 is wrong)."""
    out = []
    for m in EQUATION.finditer(text):
        a, op, b, c = m.groups()
        try:
            right = OPS[op](Fraction(a), Fraction(b)) == Fraction(c)
        except ZeroDivisionError:
            right = False
        out.append((m.end(), right))
    return out


def equation_checks(text: str) -> list[bool]:
    """Whether each `a op b = c` step in the text is right."""
    return [right for _, right in equation_steps(text)]


@register("arithmetic")
def arithmetic_reward(completion: Completion, task: dict[str, Any]) -> float:
    """Share of the arithmetic steps in the reasoning that are right (0 when there are none): a rule-based process
    reward. With `accuracy` alone, a completion whose steps are wrong but whose final number happens to match
    ("16 - 10 = 7. 7 ÷ 3 = 2.") earns the full reward, and GRPO would reinforce the wrong steps."""
    checks = equation_checks(parse_output(completion.text).thinking or completion.text)
    return sum(checks) / len(checks) if checks else 0.0


# ---- step rewards (process supervision, DeepSeekMath §4.1.3) ----
# A step reward scores the steps of one completion: `fn(completion, task) -> [(end, score), ...]`, `end` = the
# character offset in `completion.text` where the step ends. GRPO turns them into per-token advantages
# (grpo.process_reward; see train/grpo.py `process_advantages`).

StepRewardFn = Callable[[Completion, dict[str, Any]], list[tuple[int, float]]]
STEP_REWARDS: dict[str, StepRewardFn] = {}


@register("arithmetic_steps", STEP_REWARDS)
def arithmetic_steps(completion: Completion, task: dict[str, Any]) -> list[tuple[int, float]]:
    """1 for each right `a op b = c` step, 0 for each wrong one, ending just after its result."""
    return [(end, float(right)) for end, right in equation_steps(completion.text)]


# DAPO's soft overlong punishment (Yu et al. 2025, §3.4): free up to L_max - L_cache tokens, then linearly down to
# -1 at the budget; a completion cut off by the budget gets -1. Here L_cache is the last quarter of the budget.
OVERLONG_CACHE_FRACTION = 0.25


@register("length_penalty")
def length_penalty(completion: Completion, task: dict[str, Any]) -> float:
    """0 for answers within 75% of the budget, falling linearly to -1 at the budget; -1 when cut off."""
    if completion.truncated:
        return -1.0
    cache = max(1.0, OVERLONG_CACHE_FRACTION * completion.max_tokens)
    free = completion.max_tokens - cache
    return -min(1.0, max(0.0, (completion.n_tokens - free) / cache))


def resolve_reward(name: str, registry: dict[str, Callable] = REWARDS, field: str = "grpo.rewards") -> RewardFn:
    """A registered reward, or a function imported from `pkg.module:function`."""
    if name in registry:
        return registry[name]
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"{field}: unknown reward '{name}' (built-in: {', '.join(registry)}; or give 'pkg.module:function')"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{field}: cannot import '{module_name}' for reward '{name}': {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{field}: '{module_name}' has no function '{attr}'")
    return fn


def resolve_step_reward(name: str) -> StepRewardFn:
    """A registered step reward (`arithmetic_steps`), or `pkg.module:function`."""
    return resolve_reward(name, STEP_REWARDS, "grpo.process_reward")


def reward_name(name: str) -> str:
    """The metrics key of a reward: the registry name, or the function name of an import path."""
    return name.rpartition(":")[2] if ":" in name else name


def score(fns: list[RewardFn], completions: list[Completion], tasks: list[dict[str, Any]]) -> list[list[float]]:
    """rewards[i][k] = fns[k](completions[i], tasks[i]); a user function's failure names the reward."""
    out = []
    for c, t in zip(completions, tasks, strict=True):
        row = []
        for fn in fns:
            value = fn(c, t)
            try:
                row.append(float(value))
            except (TypeError, ValueError):
                raise ConfigError(f"reward {getattr(fn, '__name__', fn)!r} returned {value!r}, not a number") from None
        out.append(row)
    return out
