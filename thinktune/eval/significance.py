"""Is model B's accuracy really different from model A's on the same tasks? A paired comparison.

Both models answer the same questions, so their per-task verdicts are paired: only the discordant tasks (right for
one, wrong for the other) carry information. McNemar's exact test is a two-sided binomial test of "gained" against
"lost" among those (scipy's `binomtest`); the 95% interval for the accuracy difference is the normal approximation of
the paired difference (Agresti, "Categorical Data Analysis", §10.1). On 200 tasks the unpaired standard error of one
accuracy near 60% is ±3.5 points; pairing usually narrows the difference's interval considerably, because most
tasks are answered the same way by both models.

    thinktune eval --compare runs/sft/adapter --compare runs/grpo/adapter     # report.md: "Paired against ..."
    summary.json of train / grpo / dpo runs: "paired" (before vs after)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Z95 = 1.959963984540054


def paired_accuracy(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """Per-task verdicts of A and B on the same tasks → gained/lost counts, Δaccuracy (B − A) with a 95% interval,
    and McNemar's exact two-sided p-value."""
    from scipy.stats import binomtest

    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same tasks: {len(a)} vs {len(b)} verdicts")
    n = len(a)
    gained = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    lost = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    discordant = gained + lost
    diff = (gained - lost) / n if n else 0.0
    # Var(d̂) = [(g + l)/n − ((g − l)/n)²] / n
    se = math.sqrt(max(0.0, discordant / n - diff**2) / n) if n else 0.0
    p = binomtest(gained, discordant, 0.5).pvalue if discordant else 1.0
    return {
        "n": n,
        "accuracy_a": sum(map(bool, a)) / n if n else 0.0,
        "accuracy_b": sum(map(bool, b)) / n if n else 0.0,
        "gained": gained,
        "lost": lost,
        "difference": diff,
        "ci95": [diff - Z95 * se, diff + Z95 * se],
        "p_value": float(p),
    }


def paired_from_samples(a: list[dict], b: list[dict]) -> dict[str, Any] | None:
    """The paired comparison of two evaluations' per-sample records, when they cover the same prompts in the same
    order (else None: the comparison would not be paired)."""
    if not a or len(a) != len(b) or any(x["prompt"] != y["prompt"] for x, y in zip(a, b, strict=True)):
        return None
    return paired_accuracy([s["correct"] for s in a], [s["correct"] for s in b])


def describe(p: dict[str, Any]) -> str:
    """One line: Δ +5.5 points (95% CI +1.2 … +9.8), 20 gained / 9 lost, McNemar p = 0.031."""
    lo, hi = p["ci95"]
    return (
        f"Δ {100 * p['difference']:+.1f} points (95% CI {100 * lo:+.1f} … {100 * hi:+.1f}), "
        f"{p['gained']} gained / {p['lost']} lost of {p['n']}, McNemar p = {p['p_value']:.3g}"
    )
