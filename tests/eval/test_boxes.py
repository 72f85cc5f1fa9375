"""Box answers: parsed from the model's text, scored by IoU; bare word answers match references in words."""

from __future__ import annotations

import pytest

from thinktune.eval.boxes import box_iou, is_box, parse_box
from thinktune.eval.reasoning import answers_match, words_answer
from thinktune.eval.runner import score_sample


@pytest.mark.parametrize(
    ("text", "box"),
    [
        ("[1, 2, 3, 4]", (1, 2, 3, 4)),
        ("The cat is at [10,20 , 30.5, 40]. Done", (10, 20, 30.5, 40)),
        ("first [0,0,1,1] then [5, 6, 7, 8]", (5, 6, 7, 8)),
        ("[30, 40, 10, 20]", (10, 20, 30, 40)),  # corners put in order
        ("no box here", None),
        ("[1, 2, 3]", None),
    ],
)
def test_parse_box(text, box):
    assert parse_box(text) == box


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
        ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
        ((0, 0, 0, 10), (0, 0, 0, 10), 0.0),  # no area
    ],
)
def test_box_iou(a, b, iou):
    assert box_iou(a, b) == pytest.approx(iou)


def test_a_box_reference_is_scored_by_iou():
    assert is_box("[8, 8, 24, 24]") and not is_box("8") and not is_box("at [1, 2, 3, 4]")
    task = {"prompt": [{"role": "user", "content": "<image>Where is the square?"}], "answer": "[8, 8, 24, 24]"}

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    near = score_sample(task, [("It is at [9, 8, 24, 25].", 9)], Tok(), None)
    assert near["correct"] and near["iou"] == pytest.approx(15 * 16 / (16 * 16 + 15 * 17 - 15 * 16))
    far = score_sample(task, [("[0, 0, 10, 10]", 9)], Tok(), None)
    assert not far["correct"] and far["iou"] == pytest.approx(4 / (100 + 256 - 4))
    none = score_sample(task, [("somewhere", 1)], Tok(), None)
    assert not none["correct"] and none["iou"] == 0.0 and none["predicted"] is None


def test_a_bare_word_answers_a_reference_in_words():
    assert words_answer(None, "Red.", "red") == "Red." and answers_match("Red.", "red")
    assert words_answer(None, "red", "12") is None  # a number reference needs an extracted number
    assert words_answer("7", "7", "seven") == "7"  # an extracted answer stays
    assert not answers_match(words_answer(None, "I do not know", "red"), "red")
