"""Dataset statistics, computed in one streaming pass (memory grows with the record count, not the text).

Token lengths are those training would see (chat template included), so `too_long` is exactly the number of
records `data.max_length` would reject. Thinking lengths count the tokens of assistant reasoning.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from thinktune.data.dedup import exact_key
from thinktune.data.language import detect_script
from thinktune.data.reading import Reject
from thinktune.data.records import conversation, full_text
from thinktune.data.render import RenderOptions, encode_with_offsets, render_record

BATCH = 256


@dataclass
class DataStats:
    max_length: int
    records: int = 0
    rejects: int = 0
    reject_reasons: Counter = field(default_factory=Counter)
    untrainable: Counter = field(default_factory=Counter)  # readable records the template/mask cannot use
    turns: Counter = field(default_factory=Counter)  # messages per record → records
    roles: Counter = field(default_factory=Counter)
    with_reasoning: int = 0
    duplicates: int = 0
    scripts: Counter = field(default_factory=Counter)
    token_lengths: array = field(default_factory=lambda: array("I"))
    think_lengths: array = field(default_factory=lambda: array("I"))

    @property
    def too_long(self) -> int:
        return sum(1 for n in self.token_lengths if n > self.max_length)

    @property
    def duplicate_rate(self) -> float:
        return self.duplicates / self.records if self.records else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "rejects": self.rejects,
            "reject_reasons": dict(self.reject_reasons.most_common(20)),
            "untrainable": dict(self.untrainable.most_common(20)),
            "turns": {str(k): v for k, v in sorted(self.turns.items())},
            "roles": dict(self.roles),
            "with_reasoning": self.with_reasoning,
            "duplicates": self.duplicates,
            "duplicate_rate": self.duplicate_rate,
            "scripts": dict(self.scripts.most_common()),
            "max_length": self.max_length,
            "too_long": self.too_long,
            "tokens": summary(self.token_lengths),
            "think_tokens": summary(self.think_lengths),
        }


def summary(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    s = sorted(values)

    def pct(p: float) -> int:
        return s[min(len(s) - 1, int(p * len(s)))]

    return {
        "count": len(s),
        "mean": sum(s) / len(s),
        "min": s[0],
        "p50": pct(0.5),
        "p90": pct(0.9),
        "p99": pct(0.99),
        "max": s[-1],
        "total": sum(s),
    }


def compute_stats(
    items: Iterable[dict[str, Any] | Reject],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    system_prompt: str | None = None,
) -> DataStats:
    stats = DataStats(max_length)
    seen: set[bytes] = set()
    batch: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, Reject):
            stats.rejects += 1
            stats.reject_reasons[_reason_kind(item.reason)] += 1
            continue
        stats.records += 1
        msgs = conversation(item)
        stats.turns[len(msgs)] += 1
        stats.roles.update(m["role"] for m in msgs)
        stats.with_reasoning += any(m["reasoning"] for m in msgs)
        key = exact_key(full_text(item))
        stats.duplicates += key in seen
        seen.add(key)
        # the script of what user and assistant write (system prompts are often English boilerplate)
        spoken = "\n".join(f"{m['reasoning'] or ''}\n{m['content']}" for m in msgs if m["role"] != "system")
        stats.scripts[detect_script(spoken)] += 1
        batch.append(item)
        if len(batch) == BATCH:
            _token_stats(batch, tokenizer, system_prompt, stats)
            batch = []
    if batch:
        _token_stats(batch, tokenizer, system_prompt, stats)
    return stats


def _reason_kind(reason: str) -> str:
    """Group reasons that differ only in details ("invalid JSON: Expecting ',' …" → "invalid JSON")."""
    return reason.split(":")[0] if reason.startswith(("invalid JSON", "invalid UTF-8")) else reason


def _token_stats(
    batch: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, system_prompt: str | None, stats: DataStats
) -> None:
    from thinktune.data.formats import RecordError

    texts = []
    for rec in batch:
        try:
            as_sft = {**rec, "messages": conversation(rec)}
            texts += [r.text for r in render_record(tokenizer, as_sft, RenderOptions(system_prompt))]
        except RecordError as e:
            stats.untrainable[str(e)] += 1
    for ids, _ in encode_with_offsets(tokenizer, texts):
        stats.token_lengths.append(len(ids))
    thinking = ["\n".join(m["reasoning"] for m in conversation(r) if m["reasoning"]) for r in batch]
    thinking = [t for t in thinking if t]
    for ids, _ in encode_with_offsets(tokenizer, thinking) if thinking else []:
        stats.think_lengths.append(len(ids))


def histogram(values: Sequence[int], bins: int = 12, width: int = 40, limit: int | None = None) -> list[str]:
    """Text histogram lines: `  lo-hi  count  ████`; bins past `limit` are marked as rejected."""
    if not values:
        return ["  (no values)"]
    lo, hi = min(values), max(values)
    step = max(1, -(-(hi - lo + 1) // bins))
    counts = Counter((v - lo) // step for v in values)
    top = max(counts.values())
    lines = []
    for b in range(-(-(hi - lo + 1) // step)):
        a, z = lo + b * step, lo + (b + 1) * step - 1
        bar = "█" * max(1 if counts[b] else 0, round(width * counts[b] / top))
        mark = "  > max_length" if limit is not None and a > limit else ""
        lines.append(f"  {a:>7}-{z:<7} {counts[b]:>8}  {bar}{mark}")
    return lines


def write_histogram_png(stats: DataStats, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, values, name in (
        (axes[0], stats.token_lengths, "tokens per record"),
        (axes[1], stats.think_lengths, "thinking tokens"),
    ):
        if len(values):
            ax.hist(list(values), bins=40, color="#4c72b0")
        ax.set_xlabel(name)
        ax.set_ylabel("records")
    axes[0].axvline(stats.max_length, color="#c44e52", linestyle="--", label=f"max_length {stats.max_length}")
    axes[0].legend()
    fig.suptitle(title or f"{stats.records} records")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
