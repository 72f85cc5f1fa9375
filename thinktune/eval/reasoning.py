"""Reasoning output: split thinking from the answer, extract the final answer, compare answers, check the format.

Pure functions, tested with tables (tests/eval/test_reasoning.py).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction

NUMBER = re.compile(r"-?\d+(?:,\d{3}(?!\d))*(?:\.\d+)?(?:/\d+)?|-?\.\d+")  # "12, then" → 12; "1,234" stays whole
ANSWER_LINE = re.compile(r"(?:final answer|answer)\s*(?:is\s*:?|:)\s*(.+)", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedOutput:
    thinking: str | None
    answer_text: str
    think_closed: bool
    answer: str | None

    @property
    def format_ok(self) -> bool:
        """R1 format: a closed <think> block, then an answer in \\boxed{}."""
        return self.thinking is not None and self.think_closed and boxed(self.answer_text) is not None


def split_thinking(text: str) -> tuple[str | None, str, bool]:
    """(thinking, answer text, whether the think block was closed). Handles a template that pre-fills `<think>`."""
    if "</think>" in text:
        head, _, tail = text.partition("</think>")
        thinking = head.split("<think>", 1)[1] if "<think>" in head else head
        return thinking.strip(), tail.strip(), True
    if "<think>" in text:
        return text.split("<think>", 1)[1].strip(), "", False
    return None, text.strip(), False


def boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), with nested braces."""
    last = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            last = text[m.end() : i - 1].strip()
    return last


def extract_answer(text: str) -> str | None:
    """The final answer of a model output: last \\boxed{}, else an 'answer:' line, else the last number."""
    _, answer_text, _ = split_thinking(text)
    b = boxed(answer_text)
    if b is not None:
        return b
    lines = list(ANSWER_LINE.finditer(answer_text))
    if lines:
        # First sentence of the statement; "The answer is 42. I hope this answer is correct." → prefer the one with
        # a number in it.
        stated = [re.split(r"\.\s", m.group(1).strip(), maxsplit=1)[0].strip().rstrip(".") for m in lines]
        return next((s for s in reversed(stated) if NUMBER.search(normalize_text(s))), stated[-1])
    nums = NUMBER.findall(normalize_text(answer_text))
    if nums:
        return nums[-1]
    return boxed(text)  # only then a \boxed{} inside the thinking (e.g. output cut off before </think>)


def parse_output(text: str) -> ParsedOutput:
    thinking, answer_text, closed = split_thinking(text)
    return ParsedOutput(thinking, answer_text, closed, extract_answer(text))


def normalize_text(s: str) -> str:
    s = unicodedata.normalize("NFKC", s)  # full-width digits and signs → ASCII
    return s.replace("−", "-").replace("\u2212", "-")


def to_number(s: str) -> Fraction | None:
    """Parse '1,234', '-3.5', '3/4', '\\frac{3}{4}', '$12', '45 km' into an exact number."""
    s = normalize_text(s).strip()
    s = re.sub(r"\\(?:text|mathrm)\{[^}]*\}", "", s)
    s = re.sub(r"\\d?frac\{([^}]*)\}\{([^}]*)\}", r"(\1)/(\2)", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "").replace("\\!", "")
    m = re.fullmatch(r"\s*\(?\s*(-?[\d,]*\.?\d+)\s*\)?\s*(?:/\s*\(?\s*(-?\d+)\s*\)?)?\s*[A-Za-z°\s.]*", s)
    if not m:
        return None
    try:
        value = Fraction(m.group(1).replace(",", ""))
        if m.group(2):
            value /= Fraction(m.group(2))
    except (ValueError, ZeroDivisionError):
        return None
    return value


def answers_match(predicted: str | None, reference: str, rel_tol: float = 1e-6) -> bool:
    if predicted is None:
        return False
    a, b = to_number(predicted), to_number(reference)
    if a is not None and b is not None:
        return abs(a - b) <= rel_tol * max(1, abs(b))
    norm = lambda x: re.sub(r"\s+", " ", normalize_text(x)).strip().strip(".").lower()  # noqa: E731
    return norm(predicted) == norm(reference)
