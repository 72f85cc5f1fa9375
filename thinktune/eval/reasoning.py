"""Reasoning output: split thinking from the answer, extract the final answer, compare answers, check the format.

Also pass@k and majority voting over several samples. Pure functions, tested with tables
(tests/eval/test_reasoning.py, tests/eval/test_reasoning_extra.py).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

from thinktune.errors import ConfigError, EnvironmentProblem

NUMBER = re.compile(r"-?\d+(?:,\d{3}(?!\d))*(?:\.\d+)?(?:/\d+)?|-?\.\d+")  # "12, then" → 12; "1,234" stays whole
ANSWER_LINE = re.compile(r"(?:final answer|answer)\s*(?:is\s*:?|:)\s*(.+)", re.IGNORECASE)
# Multiple-choice letters A–J. Uppercase only in free text: "a" and "I" are words there.
OPTION_PHRASE = re.compile(r"(?i:option|choice)\s*(?:is\s*:?|:)?\s*\(?([A-J])\)?(?![A-Za-z0-9])")
OPTION_LABEL = re.compile(r"\(([A-J])\)")


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
    """The final answer of a model output: last \\boxed{}, else an 'answer:' line, else an option letter
    ("the correct option is D", a lone "(B)"), else the last number."""
    _, answer_text, _ = split_thinking(text)
    b = boxed(answer_text)
    if b is not None:
        return b
    lines = list(ANSWER_LINE.finditer(answer_text))
    if lines:
        # First sentence of the statement; "The answer is 42. I hope this answer is correct." → prefer the one with
        # a number in it.
        stated = [re.split(r"\.\s", m.group(1).strip(), maxsplit=1)[0].strip().rstrip(".") for m in lines]
        chosen = next((s for s in reversed(stated) if NUMBER.search(normalize_text(s))), stated[-1])
        return stated_option(chosen) or chosen
    phrases = OPTION_PHRASE.findall(answer_text)
    if phrases:
        return phrases[-1]
    option = lone_option(answer_text)
    if option is not None:
        return option
    nums = NUMBER.findall(normalize_text(answer_text))
    if nums:
        return nums[-1]
    return boxed(text)  # only then a \\boxed{} inside the thinking (e.g. output cut off before </think>)


def option_letter(s: str) -> str | None:
    """'B', '(b)', 'C.', 'D)' → the uppercase option letter; anything else → None."""
    m = re.fullmatch(r"\s*\(?\s*([A-Ja-j])\s*\)?\s*[.:]?\s*", normalize_text(s))
    return m.group(1).upper() if m else None


def stated_option(stated: str) -> str | None:
    """An answer statement that names an option: 'B', '(B)', '(B) Paris', 'B) Paris', 'option B'."""
    letter = option_letter(stated)
    if letter is not None:
        return letter
    m = re.match(r"\s*(?:\(([A-J])\)|([A-J])\))(?:\s|$)", stated) or OPTION_PHRASE.match(stated.strip())
    return next(g for g in m.groups() if g) if m else None


def lone_option(answer_text: str) -> str | None:
    """The answer text is just an option ('B.', '(C)'), or starts/ends a line with its only '(X)' label."""
    letter = option_letter(answer_text) if answer_text.strip() else None
    if letter is not None and answer_text.strip()[0] in "(ABCDEFGHIJ":  # "(b)" yes; a bare lowercase "b" is a word
        return letter
    labels = OPTION_LABEL.findall(answer_text)
    if len(labels) == 1:
        lines = [ln.strip() for ln in answer_text.strip().splitlines() if ln.strip()]
        if lines[0].startswith(f"({labels[0]})") or lines[-1].startswith(f"({labels[0]})"):
            return labels[0]
    return None


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
    """Numbers compare exactly (within rel_tol), option letters case-insensitively, text after normalising
    whitespace and case, and math expressions symbolically as a last resort (`\\frac{1}{2}x` == `x/2`)."""
    if predicted is None:
        return False
    a, b = to_number(predicted), to_number(reference)
    if a is not None and b is not None:
        return abs(a - b) <= rel_tol * max(1, abs(b))
    letters = option_letter(predicted), option_letter(reference)
    if None not in letters:
        return letters[0] == letters[1]
    norm = lambda x: re.sub(r"\s+", " ", normalize_text(x)).strip().strip(".").lower()  # noqa: E731
    if norm(predicted) == norm(reference):
        return True
    return symbolic_match(predicted, reference, rel_tol)


# ---- symbolic equivalence (sympy), without sympy's LaTeX parser (that one needs antlr4) ----

MAX_EXPR_CHARS = 120  # longer answers are not compared symbolically: simplify() time grows fast
MAX_EXPONENT = 64  # (x+1)^64 still expands quickly; 2^(10^10) would not
FUNCTIONS = {"sin", "cos", "tan", "sec", "csc", "cot", "ln", "log", "exp", "sqrt"}
CONSTANTS = {"pi": "pi", "infty": "oo"}
SPACING = re.compile(r"\\[,;:! ]|\\(?:left|right|displaystyle)\b|~|\$")
MATHY = re.compile(r"[\d+\-*/^=\\]")


def latex_to_sympy_text(s: str) -> str | None:
    """A LaTeX-ish answer as text for sympy's parse_expr, or None when it holds anything unexpected.

    \\frac{a}{b} → ((a)/(b)), \\sqrt{a} → sqrt(a), \\sqrt[n]{a} → (a)**(1/(n)), ^ → **, \\cdot and \\times → *.
    The result contains only digits, letters, operators, brackets, '.' and spaces (it is passed to eval), and its
    words are single-letter variables or known function names.
    """
    s = normalize_text(s).strip()
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", "", s)  # degrees
    s = re.sub(r"\\(?:text|mathrm|textbf|mbox)\s*\{[^{}]*\}", " ", s)  # units and words
    s = SPACING.sub(" ", s).replace("\\%", "").replace("%", "")
    s = re.sub(r"(\d),(\d{3})(?!\d)", r"\1\2", s)  # thousands separators
    converted = _convert_latex(s)
    if converted is None or len(converted) > 4 * MAX_EXPR_CHARS:
        return None
    if not re.fullmatch(r"[0-9A-Za-z+\-*/(). ]+", converted):
        return None
    for word in re.findall(r"[A-Za-z]+", converted):
        if word not in FUNCTIONS and word not in CONSTANTS.values() and len(word) > 3:
            return None  # a word, not a product of variables
    if re.search(r"\d{16}", converted):
        return None
    return converted


def _convert_latex(s: str) -> str | None:
    out: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            m = re.match(r"\\([A-Za-z]+)", s[i:])
            if not m:
                return None
            name, i = m.group(1), i + len(m.group(0))
            if name in ("frac", "dfrac", "tfrac"):
                num, i = _latex_group(s, i)
                den, i = _latex_group(s, i)
                a, b = _convert_latex(num or ""), _convert_latex(den or "")
                if not a or not b:
                    return None
                out.append(f"(({a})/({b}))")
            elif name == "sqrt":
                index = None
                if s[i : i + 1] == "[":
                    close = s.find("]", i)
                    if close < 0:
                        return None
                    index, i = _convert_latex(s[i + 1 : close]), close + 1
                arg, i = _latex_group(s, i)
                a = _convert_latex(arg or "")
                if not a or (index is not None and not index):
                    return None
                out.append(f"sqrt({a})" if index is None else f"(({a})**(1/({index})))")
            elif name in ("cdot", "times", "ast"):
                out.append("*")
            elif name == "div":
                out.append("/")
            elif name in CONSTANTS:
                out.append(f" {CONSTANTS[name]} ")
            elif name in FUNCTIONS:
                out.append(f" {name} ")
            else:
                return None
        elif c == "^":
            out.append("**")
            i += 1
        elif c in "{}":
            out.append("(" if c == "{" else ")")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out).strip()


def _latex_group(s: str, i: int) -> tuple[str | None, int]:
    """The argument starting at s[i]: a {balanced group}, a \\command, or one character ('\\frac12')."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return None, i
    if s[i] == "{":
        depth, j = 1, i + 1
        while j < len(s) and depth:
            depth += {"{": 1, "}": -1}.get(s[j], 0)
            j += 1
        return (s[i + 1 : j - 1], j) if depth == 0 else (None, j)
    m = re.match(r"\\[A-Za-z]+", s[i:])
    if m:
        return m.group(0), i + len(m.group(0))
    return s[i], i + 1


@lru_cache(maxsize=4096)
def parse_math(s: str):
    """A sympy expression for a LaTeX-ish answer, or None."""
    text = latex_to_sympy_text(s)
    if not text:
        return None
    import sympy
    from sympy.parsing.sympy_parser import implicit_multiplication_application, parse_expr, standard_transformations

    names: dict[str, Any] = {c: sympy.Symbol(c) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"}
    names.update(pi=sympy.pi, oo=sympy.oo, sqrt=sympy.sqrt, exp=sympy.exp, ln=sympy.log, log=sympy.log)
    names.update({f: getattr(sympy, f) for f in ("sin", "cos", "tan", "sec", "csc", "cot")})
    # No Python builtins in reach of parse_expr's eval(); only what its transformations emit.
    sympy_names = ("Integer", "Float", "Rational", "Symbol", "Function", "Add", "Mul", "Pow")
    global_names: dict[str, Any] = {"__builtins__": {}, **{n: getattr(sympy, n) for n in sympy_names}}
    transformations = (*standard_transformations, implicit_multiplication_application)
    try:
        # Unevaluated first: 9^9^9 must be refused before sympy computes it.
        raw = parse_expr(
            text, local_dict=names, global_dict=global_names, transformations=transformations, evaluate=False
        )
        if not isinstance(raw, sympy.Expr) or not _small_powers(raw):
            return None
        return parse_expr(text, local_dict=names, global_dict=global_names, transformations=transformations)
    except Exception:  # anything sympy cannot read is simply not an expression
        return None


def _small_powers(expr) -> bool:
    """Every constant exponent is at most MAX_EXPONENT in size. Inner powers are checked first (post-order), so a
    tower like 9^9^9 is refused at its first large exponent, before anything evaluates it."""
    import sympy

    for node in sympy.postorder_traversal(expr):
        if isinstance(node, sympy.Pow) and node.exp.is_number and abs(complex(node.exp.evalf())) > MAX_EXPONENT:
            return False
    return True


@lru_cache(maxsize=4096)
def symbolic_match(predicted: str, reference: str, rel_tol: float = 1e-6) -> bool:
    """Whether two math answers are equal as expressions; False whenever either cannot be parsed."""
    if len(predicted) > MAX_EXPR_CHARS or len(reference) > MAX_EXPR_CHARS:
        return False
    if "=" in predicted or "=" in reference or not (MATHY.search(predicted) or MATHY.search(reference)):
        return False  # equations are out of scope; plain words ("no" vs "on") are not products of variables
    a, b = parse_math(predicted), parse_math(reference)
    if a is None or b is None:
        return False
    try:
        import sympy

        diff = a - b
        if diff == 0:
            return True
        if not a.free_symbols and not b.free_symbols:  # two numbers, e.g. \\sqrt{2} and 1.41421356
            va, vb = complex(a.evalf()), complex(b.evalf())
            return abs(va - vb) <= rel_tol * max(1.0, abs(vb))
        symbols = sorted(diff.free_symbols, key=str)
        # Cheap screen before simplify(): unequal expressions almost always differ at an arbitrary point.
        for point in (0.3718, 1.2913, 2.7183):
            at = {x: point + 0.1117 * k for k, x in enumerate(symbols)}
            delta, scale = complex(diff.subs(at).evalf()), complex(b.subs(at).evalf())
            if math.isfinite(abs(delta)) and abs(delta) > 1e-9 * max(1.0, abs(scale)):
                return False
        return bool(sympy.simplify(diff) == 0)
    except Exception:  # sympy raises many kinds of errors on odd input; an evaluation must not crash on one
        return False


# ---- several samples per problem ----


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021, §2.1)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_vote(answers: list[str | None]) -> str | None:
    """The most common answer, equivalent forms counted together ('1,000' and '1000'); ties go to the answer seen
    first. None when no sample has an answer."""
    groups: list[list[str]] = []
    for answer in answers:
        if answer is None or not answer.strip():
            continue
        group = next((g for g in groups if answers_match(answer, g[0]) or answers_match(g[0], answer)), None)
        if group is None:
            groups.append([answer])
        else:
            group.append(answer)
    if not groups:
        return None
    return max(groups, key=len)[0]  # max keeps the first of equal-size groups


def maj_at_k_correct(answers: list[str | None], reference: str, k: int | None = None) -> bool:
    """maj@k: whether the majority answer of the first k samples (all when k is None) matches the reference."""
    return answers_match(majority_vote(answers[:k] if k is not None else answers), reference)


# ---- format checks ----

JSON_FENCE = re.compile(r"```(?:json)?\s*\n?(.*?)```", re.DOTALL | re.IGNORECASE)


def format_report(text: str, json_schema: dict | None = None) -> dict[str, bool]:
    """Format checks of one output: think_closed, answer_present (text after the thinking), boxed (a \\boxed{}
    answer after the thinking) and, with a schema, json_valid: the answer, or its last ```json block, parses as JSON
    and validates against json_schema."""
    _, answer_text, closed = split_thinking(text)
    report = {"think_closed": closed, "answer_present": bool(answer_text), "boxed": boxed(answer_text) is not None}
    if json_schema is not None:
        report["json_valid"] = json_matches_schema(answer_text, json_schema)
    return report


def json_matches_schema(answer_text: str, json_schema: dict) -> bool:
    try:
        import jsonschema
    except ImportError:
        raise EnvironmentProblem("JSON format checks need jsonschema; fix: pip install jsonschema") from None
    validator_cls = jsonschema.validators.validator_for(json_schema)
    try:
        validator_cls.check_schema(json_schema)
    except jsonschema.SchemaError as e:
        raise ConfigError(f"invalid JSON schema: {e.message}") from None
    fenced = JSON_FENCE.findall(answer_text)
    try:
        value = json.loads(fenced[-1] if fenced else answer_text)
    except ValueError:
        return False
    return validator_cls(json_schema).is_valid(value)
