"""The streaming reasoning/content splitter, on fixed strings: whole, and cut into every kind of piece."""

from __future__ import annotations

import random

import pytest

from thinktune.eval.reasoning import split_thinking
from thinktune.serve.thinking import SplitDelta, ThinkingSplitter, partial_tag, prompt_opens_thinking, split_text

CASES = [
    # (output, template pre-filled <think>, reasoning, content)
    ("<think>\nI add 2 and 3.\n</think>\n\nThe answer is 5.", False, "I add 2 and 3.", "The answer is 5."),
    ("  The answer is 5.  ", False, None, "The answer is 5."),
    ("<think> still thinking when cut off", False, "still thinking when cut off", ""),
    ("<think>\n\n</think>\n\nQuick answer", False, None, "Quick answer"),  # Qwen3 with thinking off
    ("<thi", False, None, "<thi"),  # a fragment that never became a tag is text
    ("Answer first <think>not thinking</think>", False, None, "Answer first <think>not thinking</think>"),
    ("<think>a</think>b</think>c", False, "a", "b</think>c"),  # only the first close tag counts
    ("I add 2 and 3.\n</think>\n\n5", True, "I add 2 and 3.", "5"),  # R1 distill: <think> was in the prompt
    ("<think>\nrepeated open\n</think>5", True, "repeated open", "5"),
    ("thinking, cut off </thi", True, "thinking, cut off </thi", ""),
    ("", False, None, ""),
    ("<think>\nline 1\n\nline 2\n</think>\n\n\nx\n\ny", False, "line 1\n\nline 2", "x\n\ny"),
]


@pytest.mark.parametrize("text,prefilled,reasoning,content", CASES)
def test_split_whole_text(text, prefilled, reasoning, content):
    assert split_text(text, prefilled) == (reasoning, content)


@pytest.mark.parametrize("text,prefilled,reasoning,content", CASES)
@pytest.mark.parametrize("seed", range(8))
def test_streamed_pieces_add_up_to_the_whole(text, prefilled, reasoning, content, seed):
    rng = random.Random(seed)
    splitter, total, i = ThinkingSplitter(prefilled), SplitDelta(), 0
    while i < len(text):
        step = 1 if seed == 0 else rng.randint(1, 5)  # seed 0: one character at a time
        total += splitter.feed(text[i : i + step])
        i += step
    total += splitter.finish()
    assert ((total.reasoning or None), total.content) == (reasoning, content)


def test_no_tag_fragment_is_ever_streamed():
    splitter = ThinkingSplitter()
    pieces = [splitter.feed(c) for c in "<think>\nhmm\n</think>\n\nok"] + [splitter.finish()]
    streamed = [p for p in pieces if p]
    assert all("<" not in p.reasoning + p.content and ">" not in p.reasoning + p.content for p in streamed)
    kinds = "".join("r" if p.reasoning else "c" for p in streamed)
    assert kinds == "rrr" + "c" * (len(kinds) - 3)  # "h", "m", "m" of the thinking, then the answer


def test_agrees_with_the_evaluators_split_on_r1_output():
    text = "<think>\nLet me see: 12 * 3 = 36.\n</think>\n\nSo the answer is \\boxed{36}."
    thinking, answer, _ = split_thinking(text)
    assert split_text(text) == (thinking, answer)


@pytest.mark.parametrize(
    "prompt,expected",
    [
        ("<|im_start|>assistant\n<think>\n", True),
        ("<|im_start|>assistant\n", False),
        ("<think>\n\n</think>\n\n", False),
    ],
)
def test_prompt_opens_thinking(prompt, expected):
    assert prompt_opens_thinking(prompt) is expected


@pytest.mark.parametrize("text,n", [("abc</th", 4), ("abc<", 1), ("abc", 0), ("</think", 7), ("</think>", 0)])
def test_partial_tag(text, n):
    assert partial_tag(text, "</think>") == n
