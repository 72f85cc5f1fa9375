"""Paired accuracy comparison: McNemar's exact p against a hand-summed binomial tail, the paired-difference
interval against its formula, and the pairing check on per-sample records."""

from __future__ import annotations

import math

import pytest

from thinktune.eval.significance import describe, paired_accuracy, paired_from_samples


def verdicts(both_right: int, gained: int, lost: int, both_wrong: int) -> tuple[list[bool], list[bool]]:
    a = [True] * both_right + [False] * gained + [True] * lost + [False] * both_wrong
    b = [True] * both_right + [True] * gained + [False] * lost + [False] * both_wrong
    return a, b


def test_mcnemar_exact_p_and_interval_by_hand():
    a, b = verdicts(30, 9, 1, 10)
    p = paired_accuracy(a, b)
    assert (p["n"], p["gained"], p["lost"]) == (50, 9, 1)
    assert p["accuracy_a"] == pytest.approx(31 / 50) and p["accuracy_b"] == pytest.approx(39 / 50)
    # two-sided exact binomial over the 10 discordant tasks: 2 · P(X ≤ 1 | n=10, ½) = 2 · 11/1024
    assert p["p_value"] == pytest.approx(2 * (math.comb(10, 0) + math.comb(10, 1)) / 2**10)
    diff = 8 / 50
    se = math.sqrt((10 / 50 - diff**2) / 50)
    assert p["difference"] == pytest.approx(diff)
    assert p["ci95"] == pytest.approx([diff - 1.959964 * se, diff + 1.959964 * se], abs=1e-6)
    # swapping the models negates the difference and keeps p
    q = paired_accuracy(b, a)
    assert q["difference"] == pytest.approx(-diff) and q["p_value"] == pytest.approx(p["p_value"])
    assert "+16.0 points" in describe(p) and "9 gained / 1 lost of 50" in describe(p)


def test_only_discordant_tasks_count():
    # same accuracies (60%) either way, but many more agreements → same p (agreements carry no information)
    few = paired_accuracy(*verdicts(0, 6, 2, 2))
    many = paired_accuracy(*verdicts(500, 6, 2, 500))
    assert few["p_value"] == pytest.approx(many["p_value"])
    assert few["p_value"] == pytest.approx(2 * sum(math.comb(8, k) for k in range(3)) / 2**8)
    same = paired_accuracy(*verdicts(5, 0, 0, 5))
    assert same["p_value"] == 1.0 and same["difference"] == 0.0 and same["ci95"] == [0.0, 0.0]


def test_pairing_needs_the_same_tasks():
    with pytest.raises(ValueError, match="same tasks"):
        paired_accuracy([True], [True, False])
    s = [{"prompt": "q1", "correct": True}, {"prompt": "q2", "correct": False}]
    t = [{"prompt": "q1", "correct": False}, {"prompt": "q2", "correct": True}]
    p = paired_from_samples(s, t)
    assert p["gained"] == 1 and p["lost"] == 1 and p["p_value"] == 1.0
    assert paired_from_samples(s, list(reversed(t))) is None  # different order: not paired
    assert paired_from_samples(s, t[:1]) is None and paired_from_samples([], []) is None
