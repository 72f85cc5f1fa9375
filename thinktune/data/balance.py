"""Sampling weights that balance a label (category, source, difficulty) across training.

`sample_weights` gives one weight per record for torch's WeightedRandomSampler. Each category gets a share of the
draws — equal shares (inverse frequency) by default, or the shares given — split evenly among its records.
Weights are scaled to average 1, so `num_samples=len(records)` keeps the epoch length.

`modality` is a label every record has without writing it: `image` for a record with images, `text` otherwise
(unless the record sets its own `modality`), so `balance_by: modality` with `balance_weights: {text: 3, image: 1}`
draws text and image samples 3:1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

MISSING = "<missing>"
MODALITY = "modality"


def label_of(rec: dict[str, Any], field: str) -> str:
    """The record's value of `field`: `meta.x` or `x` (looked up in meta first, then the record), as a string."""
    name = field.removeprefix("meta.")
    meta = rec.get("meta") or {}
    value = meta[name] if name in meta else rec.get(name)
    if name == MODALITY and value is None:
        return "image" if rec.get("images") else "text"
    if value is None or isinstance(value, dict | list):
        return MISSING if value is None else str(value)
    return str(value)


def sample_weights(
    records: Sequence[dict[str, Any]], field: str, weights: Mapping[str, float] | None = None
) -> list[float]:
    """Per-record sampling weight so that each value of `field` gets its share of the draws.

    weights=None: every category gets the same share (inverse frequency). Otherwise `weights[value]` is the
    category's relative share; categories not listed get 1.0. Records without the field form category "<missing>".
    """
    labels = [label_of(r, field) for r in records]
    if not labels:
        return []
    counts = Counter(labels)
    for value, w in (weights or {}).items():
        if w < 0:
            raise ValueError(f"weight of {value!r} must be >= 0, got {w}")
    share = {c: float((weights or {}).get(c, 1.0)) for c in counts}
    raw = [share[c] / counts[c] for c in labels]
    total = sum(raw)
    if total == 0:
        raise ValueError(f"every category of {field!r} has weight 0")
    return [w * len(raw) / total for w in raw]
