"""PNG plots of logged metrics (plots/loss.png, plots/lr.png, ...)."""

from __future__ import annotations

from pathlib import Path

from thinktune.train.engine.loggers import read_metrics

PLOTTED = {
    "loss": "training loss",
    "lr": "learning rate",
    "grad_norm": "gradient norm",
    "tokens_per_second": "tokens/s",
}


def plot_metrics(metrics_path: Path, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, title in PLOTTED.items():
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.5)
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
