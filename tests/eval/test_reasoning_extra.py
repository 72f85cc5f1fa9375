"""Symbolic answer equivalence (math-verify), option letters, pass@k, majority voting and format reports, as tables."""

from __future__ import annotations

import pytest

from thinktune.errors import ConfigError
from thinktune.eval.reasoning import (
    answers_match,
    extract_answer,
    format_report,
    maj_at_k_correct,
    majority_vote,
    pass_at_k,
)

# (predicted, reference, match)
SYMBOLIC = [
    ("\\frac{1}{2}x", "x/2", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("(x+1)^2", "x^2+2x+1", True),
    ("x^{2}", "x \\cdot x", True),
    ("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2", True),
    ("\\dfrac{\\pi}{2}", "\\pi/2", True),
    ("\\sqrt[3]{8}", "2", True),
    ("3 \\times 4", "12", True),
    ("(x-1)(x+1)", "x^2-1", True),
    ("\\left(x+1\\right)^2", "(x+1)^2", True),
    ("\\sin^2 x + \\cos^2 x", "1", True),
    ("\\sqrt{2}", "1.41421356", True),  # a number against an expression: within rel_tol
    ("2ab", "2ba", True),
    ("1,000x", "1000x", False),  # inside an expression a comma separates items (math-verify): {1, 0x}
    ("x + 1", "x+2", False),
    ("(x+1)^2", "x^2+1", False),
    ("2\\sqrt{2}", "\\sqrt{6}", False),
    ("\\sqrt{x^2}", "x", False),  # not for negative x
    ("\\sqrt{2}", "1.414", False),
    ("no", "on", False),  # words are not products of variables
    ("ab", "ba", False),
    ("2^{1/2}", "\\sqrt{2}", True),
    ("x^{-1}", "\\frac{1}{x}", True),
    ("2^{10}", "1024", True),
    ("2^{1000000}", "3", False),  # exponent too large to try
    ("9^{9^{9}}", "3", False),  # a tower is refused before sympy evaluates it
    ("abs(-3)", "3", False),  # no Python builtins inside parse_expr
    ("x = 5", "5", True),  # the value assigned to the unknown (math-verify)
    ("2x + 1 = 7", "7", False),  # but not any equation that ends in the reference
    ("__import__('os')", "1", False),
    ("\\unknowncommand{2}", "2", False),
    ("\\frac{1}{", "1", False),
]


@pytest.mark.parametrize(("predicted", "reference", "match"), SYMBOLIC)
def test_symbolic_equivalence(predicted, reference, match):
    assert answers_match(predicted, reference) is match


# (model output, extracted answer)
OPTIONS = [
    ("(B)", "B"),
    ("Answer: C", "C"),
    ("the correct option is D", "D"),
    ("Option A is wrong; the correct option is C.", "C"),
    ("The correct choice: (E)", "E"),
    ("The answer is (B) Paris", "B"),
    ("The answer is option B", "B"),
    ("Answer: (a)", "A"),
    ("<think>A or B? 3 > 2</think>B.", "B"),
    ("<think>hmm</think>\n(C) because 3 > 2", "C"),
    ("Case (A) gives 3, case (B) gives 5", "5"),  # labels of parts, not a chosen option
    ("I do not know.", None),
]


@pytest.mark.parametrize(("text", "expected"), OPTIONS)
def test_extract_option_letter(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("predicted", "reference", "match"),
    [("(B)", "B", True), ("b", "B", True), ("(c)", "C.", True), ("B)", "(B)", True), ("(B)", "C", False)],
)
def test_option_letters_match(predicted, reference, match):
    assert answers_match(predicted, reference) is match


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 0.4),  # c / n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (5, 2, 4, 1.0),  # n - c < k: every draw of 4 holds a correct one
        (5, 2, 5, 1.0),
        (5, 0, 1, 0.0),
        (5, 0, 5, 0.0),
        (5, 5, 1, 1.0),
        (10, 1, 1, 0.1),
        (10, 3, 2, 1 - 21 / 45),
    ],
)
def test_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["1,000", "999", "1000"], "1,000"),  # equivalent forms count together
        (["7", "\\frac{1}{2}", "0.5", "1/2", "7"], "\\frac{1}{2}"),
        (["x/2", "\\frac{1}{2}x", "x"], "x/2"),
        (["Paris", "paris", "London"], "Paris"),
        (["3", "4"], "3"),  # tie: the answer seen first
        (["(B)", "B", "C"], "(B)"),
        ([None, "5", None], "5"),
        ([None, None], None),
        ([], None),
    ],
)
def test_majority_vote(answers, expected):
    assert majority_vote(answers) == expected


def test_maj_at_k_correct():
    answers = ["12", "12.0", "13", "13", "13"]
    assert maj_at_k_correct(answers, "12", k=3)
    assert not maj_at_k_correct(answers, "12")
    assert maj_at_k_correct(answers, "13")
    assert not maj_at_k_correct([None, None], "13")


SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "number"}, "reason": {"type": "string"}},
    "required": ["answer"],
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "<think>3+4</think>\nThe answer is \\boxed{7}.",
            {"think_closed": True, "answer_present": True, "boxed": True},
        ),
        ("<think>3+4</think>\nThe answer is 7.", {"think_closed": True, "answer_present": True, "boxed": False}),
        ("<think>3+4=\\boxed{7}", {"think_closed": False, "answer_present": False, "boxed": False}),
        ("<think>3+4</think>", {"think_closed": True, "answer_present": False, "boxed": False}),
        ("\\boxed{7}", {"think_closed": False, "answer_present": True, "boxed": True}),
    ],
)
def test_format_report_without_schema(text, expected):
    assert format_report(text) == expected


@pytest.mark.parametrize(
    ("text", "json_valid"),
    [
        ('<think>x</think>{"answer": 7}', True),
        ('<think>x</think>\n```json\n{"answer": 7, "reason": "3+4"}\n```', True),
        ('<think>x</think>Here it is:\n```\n{"answer": 7}\n```\nDone.', True),
        ('<think>x</think>{"answer": "seven"}', False),  # wrong type
        ('<think>x</think>{"reason": "no answer"}', False),  # required key missing
        ("<think>x</think>{answer: 7}", False),  # not JSON
        ('<think>{"answer": 7}', False),  # only inside the unclosed thinking
    ],
)
def test_format_report_with_schema(text, json_valid):
    report = format_report(text, SCHEMA)
    assert report["json_valid"] is json_valid
    assert set(report) == {"think_closed", "answer_present", "boxed", "json_valid"}


def test_format_report_bad_schema_is_config_error():
    with pytest.raises(ConfigError, match="invalid JSON schema"):
        format_report('{"answer": 7}', {"type": "no-such-type"})
