"""The quickstart job (`thinktune train`, both evaluations included) with the previous defaults and with today's,
side by side in one run, on the same machine, one after the other (never concurrently).

    python bench/quickstart_speed.py            # ~15 minutes on a 2-core CPU

previous: padded batches, full-logits loss, foreach AdamW, and the evaluation after training with the LoRA adapter
unmerged (reproduced here by patching `merged_for_inference` out); now: the defaults (packing, chunked LM-head
loss, fused AdamW, the adapter merged for the evaluation after training).
Prints wall time, the evaluations' and training's seconds, training tokens/s and held-out accuracy before → after,
and writes bench/results/quickstart_speed.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
PREVIOUS = ["train.packing=false", "train.loss_chunk_size=null", "train.optimizer=adamw"]

CHILD = """
import sys, contextlib
import thinktune.train.run as run
run.merged_for_inference = contextlib.nullcontext
from thinktune.cli import app
sys.argv = ["thinktune", *{args!r}]
app()
"""


def run(label: str, out: Path, sets: list[str], previous_eval: bool) -> dict:
    args = ["train", "-o", str(out), *[x for s in sets for x in ("--set", s)]]
    cmd = [sys.executable, "-c", CHILD.format(args=args)] if previous_eval else [
        sys.executable, "-m", "thinktune", *args
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{label}: exit {done.returncode}\n{done.stderr[-3000:]}")
    s = json.loads((out / "summary.json").read_text())
    return {
        "label": label,
        "wall_seconds": wall,
        "eval_before_seconds": s["before"]["seconds"],
        "eval_after_seconds": s["after"]["seconds"],
        "train_seconds": s["train_seconds"],
        "train_tokens_per_second": s["train_tokens_per_second"],
        "accuracy_before": s["before"]["accuracy"],
        "accuracy_after": s["after"]["accuracy"],
        "generation_tokens_per_second_before": s["before"].get("generation_tokens_per_second"),
        "generation_tokens_per_second_after": s["after"].get("generation_tokens_per_second"),
        "final_loss": s["final_loss"],
    }


def main() -> None:
    sys.path.insert(0, str(HERE))
    from eval_speed import machine

    root = Path("runs/bench-quickstart")
    rows = [
        run("previous defaults", root / "previous", PREVIOUS, previous_eval=True),
        run("defaults now", root / "now", [], previous_eval=False),
    ]
    print(f"machine: {machine()}")
    print("| defaults | wall | eval before | training | eval after | train tok/s | accuracy before → after |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['label']} | {r['wall_seconds']:.0f} s | {r['eval_before_seconds']:.0f} s "
            f"| {r['train_seconds']:.0f} s | {r['eval_after_seconds']:.0f} s | {r['train_tokens_per_second']:.0f} | "
            f"{r['accuracy_before']:.0%} → {r['accuracy_after']:.0%} |"
        )
    a, b = rows
    print(f"now / previous: wall {b['wall_seconds'] / a['wall_seconds']:.2f}×, training tokens/s "
          f"{b['train_tokens_per_second'] / a['train_tokens_per_second']:.2f}×")  # fmt: skip
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "quickstart_speed.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
