"""Box answers of grounding tasks: a reference written as `[x1, y1, x2, y2]` (corners, any unit the task uses) is
scored by intersection over union with the last box in the model's answer; IoU ≥ `IOU_CORRECT` counts as correct,
the convention of RefCOCO-style grounding benchmarks."""

from __future__ import annotations

import re

IOU_CORRECT = 0.5
NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
BOX = re.compile(rf"\[{NUM},{NUM},{NUM},{NUM}\]")


def parse_box(text: str | None) -> tuple[float, float, float, float] | None:
    """The last `[x1, y1, x2, y2]` in a text, corners ordered; None when there is none."""
    found = BOX.findall(text or "")
    if not found:
        return None
    x1, y1, x2, y2 = (float(v) for v in found[-1])
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def is_box(reference: str) -> bool:
    """Whether a reference answer is exactly one box."""
    return BOX.fullmatch(reference.strip()) is not None


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two corner boxes; 0 when either has no area."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
