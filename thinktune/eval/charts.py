"""PNG charts for evaluation reports: metric bars per model, think-length histograms."""

from __future__ import annotations

from pathlib import Path

from thinktune.eval.runner import EvalResult

BAR_METRICS = ("accuracy", "format_compliance")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metric_bars(results: dict[str, EvalResult], path: Path, metrics: tuple[str, ...] = BAR_METRICS) -> Path:
    plt = _plt()
    labels = list(results)
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(labels) + 2), 3.8))
    for j, m in enumerate(metrics):
        values = [getattr(results[k], m) for k in labels]
        xs = [i + (j - (len(metrics) - 1) / 2) * width for i in range(len(labels))]
        bars = ax.bar(xs, values, width, label=m.replace("_", " "))
        ax.bar_label(bars, labels=[f"{v:.0%}" for v in values], fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=9)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("fraction of tasks")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("accuracy and format compliance")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def think_length_histogram(results: dict[str, EvalResult], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    all_lengths = [s["think_tokens"] for r in results.values() for s in r.samples]
    top = max(all_lengths + [1])
    bins = list(range(0, top + max(1, top // 20) + 1, max(1, top // 20)))
    for label, r in results.items():
        ax.hist([s["think_tokens"] for s in r.samples], bins=bins, alpha=0.55, label=label)
    ax.set_xlabel("think tokens per answer (0 = no <think> block)")
    ax.set_ylabel("answers")
    ax.legend(fontsize=8)
    ax.set_title("think length")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
