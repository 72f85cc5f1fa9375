"""Reasoning output: split thinking from the answer, extract the final answer, compare answers, check the format.

Also pass@k and majority voting over several samples. Pure functions, tested with tables
(tests/eval/test_reasoning.py, tests/eval/test_reasoning_extra.py, tests/eval/test_reasoning_grader.py).
"""

from __future__ import annotations

import json
import math
import re
import threading
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

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


# ---- answer equivalence ----
# Math goes to math-verify (Hugging Face), the checker behind open-r1's and TRL's accuracy rewards, on the whole
# answer: a number is never read out of a longer answer ('4x' is not 4, '1,2,3' is not 123; issue 19).

PLAIN_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d*)?|\.\d+)"  # '1,234.5', '-3', '5.', '.5'
WHOLE_NUMBER = re.compile(rf"(?:\\?\$)?\s*({PLAIN_NUMBER})(?:\s*/\s*(\d+))?")  # '$12', '3/4'
WHOLE_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(\d+)\s*\}")
TEXT_COMMAND = re.compile(r"\\(?:text|mathrm|textrm|textbf|mbox)\s*\{([^{}]*)\}")
# A unit after a number ('12 apples', '45\text{ km}'): words of two or more letters. A single letter stays a
# variable ('3t', '5 m'); math-verify's own unit list would drop t, h, m, s, d, ... after a number, so it is off.
UNIT_WORDS = r"\s+([A-Za-z]{2,}(?:\s+[A-Za-z]{2,})*)"
UNIT = re.compile(rf"(?<=[\d}}])(?:\s*\\(?:text|mathrm|textrm|mbox)\s*\{{\s*([^{{}}]*?)\s*\}}|{UNIT_WORDS})\.?$")
WORD = re.compile(r"[^\W\d_]{2,}")
MATH_SIGN = re.compile(r"[\d\\^_=+*/(){}\[\]<>|]")
BARE_PI = re.compile(r"(?<![\\A-Za-z])pi(?![A-Za-z])")  # '2*pi', '2pi': math-verify only knows \pi
COMBINATORIAL = re.compile(r"!|\\[dt]?binom|\\choose")
MAX_MATH_CHARS = 256  # longer answers are compared as text only: simplify() time grows fast
MAX_DIGITS = 10_000  # a constant power may have this many digits: 2^{1000} yes, 9^{9^{9}} (370M digits) no
MAX_EXPONENT = 64  # (x+1)^64 still expands quickly; (x+1)^1000 would not
MAX_FACTORIAL = 10_000  # 10000! is 35,660 digits; (10^6)! or \binom{10^7}{...} would stall the comparison
TIMEOUT_S = 5  # math-verify's default, per parse and per comparison, where it may use SIGALRM


def to_number(s: str) -> Fraction | None:
    """The answer as an exact number when the whole answer is one: '1,234', '-3.5', '3/4', '\\frac{3}{4}', '$12'.
    Anything more ('4x', '1,2,3', '45 km') is None."""
    s = normalize_text(s).strip()
    m = WHOLE_NUMBER.fullmatch(s) or WHOLE_FRAC.fullmatch(s)
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
    """Whether a final answer equals the reference. Option letters compare case-insensitively; a reference in words
    ('Paris') only matches as text (case, whitespace, a final '.' and \\text{} ignored); the same text matches; two
    plain numbers compare exactly (within rel_tol); everything else is math-verify on the whole answer ('x+1' ==
    '1+x', '\\frac{1}{2}' == '0.5', 'x = 3' == '3', but '3x' != '3y' and '1,2,3' != '123'). A unit after a number
    is dropped unless both sides give different ones ('12 km' == '12', '12 km' != '12 m')."""
    if predicted is None or not predicted.strip():
        return False
    letters = option_letter(predicted), option_letter(reference)
    if None not in letters:
        return letters[0] == letters[1]
    pred, ref = math_text(predicted), math_text(reference)
    if WORD.search(ref) and not MATH_SIGN.search(ref):  # words are not products of variables: 'no' != 'on'
        return plain_text(pred) == plain_text(ref)
    if " ".join(pred.split()) == " ".join(ref.split()):
        return True
    (pred, pred_unit), (ref, ref_unit) = split_unit(pred), split_unit(ref)
    if pred_unit and ref_unit and pred_unit != ref_unit:
        return False
    a, b = to_number(pred), to_number(ref)
    if a is not None and b is not None:
        return abs(a - b) <= rel_tol * max(1, abs(b))
    return math_equal(pred, ref)


def words_answer(predicted: str | None, answer_text: str, reference: str) -> str | None:
    """The extracted answer, or — when nothing was extracted and the reference is in words ('red', 'Paris') — the
    whole answer text, which answers_match then compares as words (short-answer and visual QA answer bare)."""
    if predicted is not None:
        return predicted
    ref = math_text(reference)
    return answer_text if WORD.search(ref) and not MATH_SIGN.search(ref) and answer_text.strip() else None


def math_text(s: str) -> str:
    s = BARE_PI.sub(r"\\pi ", normalize_text(s))
    return s.replace("\\$", "").replace("$", "").strip()  # currency; also math-verify's own delimiter


def plain_text(s: str) -> str:
    """An answer in words, compared case-insensitively: 'Paris.', '\\text{paris}' → 'paris'."""
    return " ".join(TEXT_COMMAND.sub(r"\1", s).split()).rstrip(".").strip().lower()


def split_unit(s: str) -> tuple[str, str | None]:
    """'12 apples' → ('12', 'apples'); '45\\text{ km}' → ('45', 'km'); '3t' → ('3t', None)."""
    m = UNIT.search(s)
    if not m or not s[: m.start()].strip():
        return s, None
    return s[: m.start()].strip(), (m.group(1) or m.group(2)).lower()


@lru_cache(maxsize=4096)
def parse_math(s: str, timeout_s: int | None) -> list:
    """math-verify's parse of a whole answer as LaTeX ([] when it is not math, or too big to compare safely)."""
    if len(s) > MAX_MATH_CHARS or (COMBINATORIAL.search(s) and re.search(r"\d{6}", s)):
        return []  # \binom{10^6}{...} of literal integers is evaluated while parsing
    from math_verify import LatexExtractionConfig, LatexNormalizationConfig, parse

    latex = LatexExtractionConfig(
        boxed_match_priority=0,
        # math-verify's defaults but units=False (see UNIT); an extracted answer gets no ExprExtractionConfig: that
        # one reads the leading number of '3x' as 3.
        normalization_config=LatexNormalizationConfig(
            basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False
        ),
    )
    parsed = parse(f"${s}$", [latex], fallback_mode="no_fallback", parsing_timeout=timeout_s)
    return parsed if all(isinstance(p, str) or _bounded(p) for p in parsed) else []


def _bounded(expr) -> bool:
    """No constant in expr is too big to compare: powers under MAX_DIGITS digits (MAX_EXPONENT for a symbolic base),
    factorials and binomials of at most MAX_FACTORIAL. Inner nodes come first (post-order), so a tower like
    9^{9^{9}} is refused at its first large power, before anything evaluates it."""
    import sympy
    from sympy.functions.combinatorial.factorials import CombinatorialFunction

    size = lambda x: abs(complex(x.evalf()))  # noqa: E731
    try:
        for node in sympy.postorder_traversal(expr):
            if isinstance(node, sympy.Pow) and node.exp.is_number:
                if node.base.is_number:
                    if size(node.exp) * math.log10(max(2.0, size(node.base))) > MAX_DIGITS:
                        return False
                elif size(node.exp) > MAX_EXPONENT:
                    return False
            elif isinstance(node, (CombinatorialFunction, sympy.gamma)):
                if any(a.is_number and size(a) > MAX_FACTORIAL for a in node.args):
                    return False
    except (TypeError, ValueError, OverflowError):  # a constant too big for a float
        return False
    return True


@lru_cache(maxsize=4096)
def math_equal(predicted: str, reference: str) -> bool:
    """math-verify's verify(gold=reference, pred=predicted); False when either is not math. An equation only
    matches a plain reference when it assigns a variable ('x = 3' == '3', but '2x + 1 = 7' != '7')."""
    # math-verify's timeouts use SIGALRM, which only the main thread may set (elsewhere it raises ValueError); in a
    # worker thread the size limits above are the only guard.
    timeout_s = TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold, pred = parse_math(reference, timeout_s), parse_math(predicted, timeout_s)
    if not gold or not pred:
        return False
    from math_verify import verify
    from math_verify.grader import is_assignment_relation, is_equation, is_relation

    if is_equation(pred[0]) and not is_relation(gold[0]) and not is_assignment_relation(pred[0]):
        return False
    return verify(gold, pred, timeout_seconds=timeout_s)


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
