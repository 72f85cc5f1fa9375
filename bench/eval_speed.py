"""Evaluation generation on the bundled test set, greedy, 128 new tokens — the quickstart's evaluations before and
after training: transformers' `model.generate` at batch 50 (the LoRA adapter unmerged) against the evaluation as it
runs now (eval/generate.py: the adapter merged after training) and against other batch sizes. Answers are compared
one by one.

    python bench/eval_speed.py [--adapter runs/quickstart/adapter] [--n 100]

Prints a table (seconds, generated tokens/s, identical answers, ratio) and writes bench/results/eval_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from thinktune.config import load_config
from thinktune.eval.generate import GenerationStats, generate_batch, merged_for_inference
from thinktune.eval.runner import task_prompts
from thinktune.eval.tasks import load_tasks
from thinktune.models import load_pretrained


def timed(fn, prompts: list[str], batch: int) -> tuple[list[tuple[str, int]], float]:
    start = time.perf_counter()
    out = [x for i in range(0, len(prompts), batch) for x in fn(prompts[i : i + batch])]
    return out, time.perf_counter() - start


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(x.split(":", 1)[1].strip() for x in lscpu.splitlines() if x.startswith("Model name"))
        flags = next(x for x in lscpu.splitlines() if x.startswith("Flags"))
        isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    except (OSError, StopIteration):
        name, isa = platform.processor(), "?"
    return f"{name}, {isa}, {torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapter", default="runs/quickstart/adapter", help="trained LoRA adapter (the 'after' rows)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args()
    cfg = load_config(None)
    model, tok, _ = load_pretrained(cfg.model)
    model.eval()
    tasks = load_tasks(cfg.data.test, cfg.data.format, args.n).records
    prompts = sorted(task_prompts(tok, tasks, cfg.data.system_prompt), key=len)
    models = {"before (base model)": model}
    if Path(args.adapter, "adapter_config.json").is_file():
        from peft import PeftModel

        models["after (LoRA adapter)"] = PeftModel.from_pretrained(model, args.adapter).eval()
    rows = []
    for label, m in models.items():
        old, t_old = timed(lambda b, m=m: generate_batch(m, tok, b, args.max_new_tokens), prompts, 50)
        stats = GenerationStats()
        with merged_for_inference(m) if "after" in label else nullcontext(m) as now:  # as run_eval does
            new, t_new = timed(
                lambda b, m=now, st=stats: generate_batch(m, tok, b, args.max_new_tokens, stats=st), prompts, 50
            )
        _, t_100 = timed(lambda b, m=m: generate_batch(m, tok, b, args.max_new_tokens), prompts, 100)
        same = sum(a[0] == b[0] for a, b in zip(old, new, strict=True))
        tokens = sum(n for _, n in new)
        rows.append({
            "eval": label, "old_seconds": t_old, "new_seconds": t_new, "ratio": t_old / t_new,
            "old_tokens_per_second": sum(n for _, n in old) / t_old, "new_tokens_per_second": tokens / t_new,
            "identical": same, "n": len(prompts), "generated_tokens": tokens, "batch_100_seconds": t_100,
        })  # fmt: skip
    print(f"machine: {machine()}")
    print("| eval | before (batch 50, unmerged) | now (batch 50, merged after training) | × | tok/s | identical "
          "answers | batch 100 instead |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['eval']} | {r['old_seconds']:.1f} s | {r['new_seconds']:.1f} s | {r['ratio']:.2f} | "
            f"{r['old_tokens_per_second']:.0f} → {r['new_tokens_per_second']:.0f} | {r['identical']}/{r['n']} | "
            f"{r['batch_100_seconds']:.1f} s |"
        )
    out = Path(__file__).parent / "results" / "eval_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
