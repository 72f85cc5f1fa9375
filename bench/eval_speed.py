"""Evaluation generation on the bundled test set, greedy, 128 new tokens — the quickstart's evaluations before and
after training: transformers' `model.generate` at batch 50 (the LoRA adapter unmerged) against the evaluation as it
runs now (eval/generate.py: the adapter merged after training) and against other batch sizes. Answers are compared
one by one. Then the held-out loss pass of the same evaluations: the full-logits loss over length-unsorted batches
(`full_logits_loss`, as it ran before) against `heldout_loss` (length-sorted batches, the LM head at the scored
positions only), values compared.

    python bench/eval_speed.py [--adapter runs/quickstart/adapter] [--n 100] [--heldout-only]

Prints tables (seconds, generated tokens/s, identical answers, ratio) and writes bench/results/eval_speed.json.
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
from thinktune.data.collate import pad_batch
from thinktune.data.render import RenderOptions, tokenize_conversation
from thinktune.eval.generate import GenerationStats, batched, generate_batch, merged_for_inference
from thinktune.eval.runner import heldout_loss, task_prompts
from thinktune.eval.tasks import load_tasks
from thinktune.models import load_pretrained


def timed(fn, prompts: list[str], batch: int) -> tuple[list[tuple[str, int]], float]:
    start = time.perf_counter()
    out = [x for i in range(0, len(prompts), batch) for x in fn(prompts[i : i + batch])]
    return out, time.perf_counter() - start


@torch.inference_mode()
def full_logits_loss(model, tokenizer, tasks: list[dict], system_prompt: str | None, bs: int, thinking: str) -> float:
    """The baseline: transformers' own loss over the full logits, batches in task order."""
    samples = [
        tokenize_conversation(tokenizer, t["messages"], system_prompt, opts=RenderOptions(thinking=thinking))
        for t in tasks
    ]
    total, count = 0.0, 0
    for chunk in batched(samples, bs):
        batch = pad_batch(chunk, tokenizer.pad_token_id)
        n = int((batch["labels"][:, 1:] != -100).sum())
        total, count = total + float(model(**batch).loss) * n, count + n
    return total / count


def heldout_rows(models: dict, tok, tasks: list[dict], cfg) -> list[dict]:
    rows = []
    args = (tok, tasks, cfg.data.system_prompt, cfg.eval.batch_size, cfg.data.thinking)
    for label, m in models.items():
        t = time.perf_counter()
        old = full_logits_loss(m, *args)
        t_old, t = time.perf_counter() - t, time.perf_counter()
        new = heldout_loss(m, *args)
        t_new = time.perf_counter() - t
        rows.append({"eval": label, "old_seconds": t_old, "new_seconds": t_new, "old_loss": old, "new_loss": new})
    print("| held-out loss | full logits, task order | scored positions, sorted | × | loss (old / new) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['eval']} | {r['old_seconds']:.1f} s | {r['new_seconds']:.1f} s | "
            f"{r['old_seconds'] / r['new_seconds']:.2f} | {r['old_loss']:.5f} / {r['new_loss']:.5f} |"
        )
    return rows


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
    ap.add_argument("--heldout-only", action="store_true", help="only the held-out loss comparison")
    args = ap.parse_args()
    cfg = load_config(None)
    model, tok, _ = load_pretrained(cfg.model)
    model.eval()
    tasks = load_tasks(cfg.data.test, cfg.data.format, args.n).records
    prompts = sorted(task_prompts(tok, tasks, cfg.data.system_prompt), key=len)
    models = {"before (base model)": model}
    if Path(args.adapter, "adapter_config.json").is_file():
        from peft import PeftModel

        base, _, _ = load_pretrained(cfg.model)  # PEFT injects the adapter into the model it is given
        models["after (LoRA adapter)"] = PeftModel.from_pretrained(base, args.adapter).eval()
    print(f"machine: {machine()}")
    heldout = heldout_rows(models, tok, tasks, cfg)
    rows = []
    for label, m in ({} if args.heldout_only else models).items():
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
    out.write_text(json.dumps({"machine": machine(), "rows": rows, "heldout": heldout}, indent=2))


if __name__ == "__main__":
    main()
