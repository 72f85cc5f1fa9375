"""Answer extraction, answer equivalence, thinking split and format compliance, as tables."""

from __future__ import annotations

from fractions import Fraction

import pytest

from thinktune.eval.reasoning import (
    answers_match,
    boxed,
    extract_answer,
    parse_output,
    split_thinking,
    to_number,
)

# (id, model output, extracted answer)
EXTRACT = [
    ("boxed_simple", "The answer is \\boxed{42}.", "42"),
    ("boxed_nested_frac", "So \\boxed{\\frac{1}{2}} is it.", "\\frac{1}{2}"),
    ("boxed_deeply_nested", "\\boxed{\\sqrt{\\frac{a^{2}}{4}}}", "\\sqrt{\\frac{a^{2}}{4}}"),
    ("boxed_multiple_last_wins", "First \\boxed{3}, then corrected: \\boxed{4}.", "4"),
    ("fbox", "Result: \\fbox{7}", "7"),
    ("boxed_space_before_brace", "\\boxed {9}", "9"),
    ("boxed_unbalanced_ignored", "\\boxed{5} and \\boxed{6", "5"),
    ("boxed_wins_over_answer_line", "Answer: 3\nso \\boxed{4}", "4"),
    ("boxed_after_think", "<think>maybe \\boxed{5}</think>\nThe answer is \\boxed{6}.", "6"),
    (
        "answer_after_think_beats_thinking_numbers",
        "<think>17 + 25 = 42? no, 17 + 26 = 43</think>The answer is 43.",
        "43",
    ),
    ("plain_answer_after_think_beats_boxed_in_thinking", "<think>guess \\boxed{5}, no</think>The answer is 7.", "7"),
    ("last_number_after_think", "<think>1 2 3 99</think>So Tom has 8 apples", "8"),
    ("boxed_in_unclosed_think", "<think>3 + 4 = \\boxed{7} and then", "7"),
    ("prefilled_think", "5 * 5 = 25</think> \\boxed{25}", "25"),
    ("answer_colon", "Some work\nanswer: 42", "42"),
    ("answer_colon_capital", "Answer: 42", "42"),
    ("answer_is_colon", "Therefore the answer is: 12 apples.", "12 apples"),
    ("final_answer_is", "The final answer is 42.", "42"),
    ("final_answer_colon_text", "Final Answer: Paris", "Paris"),
    ("last_answer_line_wins", "answer: 1\nWait.\nanswer: 2", "2"),
    ("last_number_fallback", "First 3 then 4 gives 12", "12"),
    ("last_number_trailing_comma", "So we get 12, which is even.", "12"),
    ("last_number_thousands", "The total is 1,234,567.", "1,234,567"),
    ("last_number_decimal", "It costs 2.50 dollars", "2.50"),
    ("last_number_negative", "The temperature fell to -5 degrees", "-5"),
    ("last_number_fraction", "Half of it, 1/2", "1/2"),
    ("last_number_fullwidth", "It is ４２", "42"),
    ("last_number_unicode_minus", "It is \u22123", "-3"),
    ("nothing", "I do not know.", None),
    ("empty", "", None),
    ("only_unclosed_think", "<think>I think 5", None),
]


@pytest.mark.parametrize(("text", "expected"), [e[1:] for e in EXTRACT], ids=[e[0] for e in EXTRACT])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# (predicted, reference, match)
MATCH = [
    ("42", "42", True),
    ("1,234", "1234", True),
    ("1,234,567", "1234567", True),
    ("3/4", "0.75", True),
    ("\\frac{3}{4}", "0.75", True),
    ("\\frac{3}{4}", "3/4", True),
    ("\\dfrac{3}{4}", "3/4", True),
    ("\\frac{-1}{2}", "-0.5", True),
    ("-3/4", "-0.75", True),
    ("-5", "-5", True),
    ("-5", "5", False),
    ("-5", "-5.0", True),
    ("\u22123", "-3", True),
    ("４２", "42", True),
    ("45 km", "45", True),
    ("45\\text{ km}", "45", True),
    ("12 apples", "12", True),
    ("$12", "12", True),
    ("\\$12", "12", True),
    ("$12.00", "12", True),
    ("50%", "50", True),
    ("50\\%", "50", True),
    ("2.50", "2.5", True),
    (".5", "0.5", True),
    ("5.", "5", True),
    ("0.333333333", "1/3", True),
    ("0.33", "1/3", False),
    ("3", "4", False),
    ("42", "420", False),
    ("Paris", "paris", True),
    ("Paris.", "paris", True),
    ("  New   York ", "new york", True),
    ("London", "Paris", False),
    ("x + 1", "x+2", False),
    (None, "42", False),
    ("", "42", False),
]


@pytest.mark.parametrize(("predicted", "reference", "match"), MATCH)
def test_answers_match(predicted, reference, match):
    assert answers_match(predicted, reference) is match


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1,234", Fraction(1234)),
        ("-3.5", Fraction(-7, 2)),
        ("3/4", Fraction(3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("$12", Fraction(12)),
        ("45 km", None),  # only a whole answer is a number; answers_match drops the unit
        ("4x", None),
        ("1,2,3", None),
        ("5.", Fraction(5)),
        ("１２", Fraction(12)),
        ("1/0", None),
        ("abc", None),
        ("x = 5", None),
    ],
)
def test_to_number(text, value):
    assert to_number(text) == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{1}", "1"),
        ("\\boxed{a}\\fbox{b}", "b"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{ 3 }", "3"),
        ("\\boxed{", None),
        ("no box", None),
    ],
)
def test_boxed(text, expected):
    assert boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>\nplan\n</think>\n\nanswer", ("plan", "answer", True)),
        ("<think>plan</think>", ("plan", "", True)),
        ("plan</think>answer", ("plan", "answer", True)),  # template pre-filled <think>
        ("<think>a</think>b</think>c", ("a", "b</think>c", True)),  # first close ends thinking
        ("<think>still thinking", ("still thinking", "", False)),
        ("just an answer ", (None, "just an answer", False)),
        ("", (None, "", False)),
    ],
)
def test_split_thinking(text, expected):
    assert split_thinking(text) == expected


@pytest.mark.parametrize(
    ("text", "format_ok"),
    [
        ("<think>3+4=7</think>\nThe answer is \\boxed{7}.", True),
        ("3+4=7</think>\\boxed{7}", True),  # pre-filled <think> counts as closed
        ("<think></think>\\boxed{7}", True),
        ("<think>3+4=7</think>\nThe answer is 7.", False),  # no boxed answer
        ("<think>3+4=\\boxed{7}</think>\nThe answer is 7.", False),  # boxed only inside the thinking
        ("<think>3+4=7 \\boxed{7}", False),  # never closed
        ("The answer is \\boxed{7}.", False),  # no thinking
        ("", False),
    ],
)
def test_format_ok(text, format_ok):
    parsed = parse_output(text)
    assert parsed.format_ok is format_ok


def test_parse_output_fields():
    p = parse_output("<think>\n2+2=4\n</think>\n\nSo \\boxed{4}.")
    assert (p.thinking, p.answer_text, p.think_closed, p.answer) == ("2+2=4", "So \\boxed{4}.", True, "4")
    assert answers_match(p.answer, "4")
