"""Speculative decoding in the serving engine: generated tokens/s without it, with prompt lookup, and with a draft
model, on the bundled SmolLM2-135M-Instruct and the bundled arithmetic test prompts; greedy, same max tokens.

    python bench/speculative.py                                   # 8 prompts, 64 tokens, draft = first 8 layers
    python bench/speculative.py --n 32 --max-tokens 96 --lookup 10 --draft-layers 6 --threads 2

There is no smaller real model with SmolLM2's tokenizer on this machine, so the draft model is SmolLM2 itself cut to
its first `--draft-layers` of 30 decoder layers (same embedding, final norm and tied LM head; untrained as a draft).
A real deployment would draft with a small model trained on the same data (e.g. a 4x smaller sibling).

Every request goes through the engine (serve/engine.py) as `thinktune serve` runs it, one request at a time in every
row (speculative decoding takes one sequence; plain decoding is run the same way so the rows compare decoding, not
batching), after one untimed warm-up request. A last row runs plain decoding with the engine's batching (up to 8
requests together), which speculative decoding gives up. Acceptance = accepted draft tokens / drafted tokens
(models/speculative.py DraftCounter, as on /metrics). "same text" counts answers equal to plain decoding's.

Prints the machine (lscpu model name, whether avx512f is in its flags, cores, torch threads, the 1-minute load average
when it starts) and a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import subprocess
import threading
import time

import torch

from thinktune.config import ModelConfig
from thinktune.eval.runner import task_prompts
from thinktune.eval.tasks import load_tasks
from thinktune.models import load_pretrained
from thinktune.models.speculative import Speculation
from thinktune.serve.adapters import ServedModel
from thinktune.serve.engine import Engine, Failed, Finished, GenerationRequest, TextDelta
from thinktune.serve.sampling import SamplingParams


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(x.split(":", 1)[1].strip() for x in lscpu.splitlines() if x.startswith("Model name"))
        flags = next(x for x in lscpu.splitlines() if x.startswith("Flags"))
        avx512 = "avx512f" in flags.split()
    except (OSError, StopIteration):
        name, avx512 = platform.processor(), None
    flag = "yes" if avx512 else "no" if avx512 is False else "?"
    load = os.getloadavg()[0]  # other processes on the machine slow every row alike
    return f"{name}; avx512f: {flag}; {os.cpu_count()} cores; torch threads: {torch.get_num_threads()}; load {load:.1f}"


def first_layers(model: torch.nn.Module, n: int) -> torch.nn.Module:
    """A copy of a Llama-family causal LM keeping its first `n` decoder layers (embedding, norm and head kept)."""
    draft = copy.deepcopy(model)
    draft.model.layers = draft.model.layers[:n]
    draft.config.num_hidden_layers = n
    if getattr(draft.config, "layer_types", None):
        draft.config.layer_types = draft.config.layer_types[:n]
    return draft.eval()


class Answer:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.finished: Finished | None = None
        self.done = threading.Event()

    def emit(self, event) -> None:
        if isinstance(event, TextDelta):
            self.parts.append(event.text)
        elif isinstance(event, Finished):
            self.finished = event
            self.done.set()
        elif isinstance(event, Failed):
            raise SystemExit(f"generation failed: {event.message}")


def run(served: ServedModel, prompts: list[list[int]], max_tokens: int, batch: int) -> dict:
    """Send the prompts through an engine (`batch` at a time); tokens/s over the timed ones, texts, acceptance."""
    drafted, accepted = [], []
    engine = Engine(served, max_batch_size=batch, on_draft=lambda d, a: (drafted.append(d), accepted.append(a)))
    engine.start()
    params = SamplingParams(max_tokens, temperature=0)

    def ask(chunk: list[list[int]]) -> list[Answer]:
        answers = [Answer() for _ in chunk]
        for ids, a in zip(chunk, answers, strict=True):
            engine.submit(GenerationRequest(ids, params, a.emit))
        for a in answers:
            a.done.wait()
        return answers

    ask(prompts[:1])  # warm-up, untimed
    drafted.clear(), accepted.clear()
    answers, start = [], time.perf_counter()
    for i in range(0, len(prompts), batch):
        answers += ask(prompts[i : i + batch])
    seconds = time.perf_counter() - start
    engine.stop()
    tokens = sum(a.finished.completion_tokens for a in answers)
    return {
        "texts": ["".join(a.parts) for a in answers],
        "tokens": tokens,
        "seconds": seconds,
        "acceptance": sum(accepted) / sum(drafted) if sum(drafted) else None,
        "drafted": sum(drafted),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=8, help="arithmetic test prompts")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--lookup", type=int, default=10, help="prompt lookup: tokens drafted")
    ap.add_argument("--draft-layers", type=int, default=8, help="draft model: SmolLM2's first N of 30 layers")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer, _ = load_pretrained(ModelConfig())  # the bundled SmolLM2-135M-Instruct
    model.eval()
    tasks = load_tasks("bundled:arithmetic/test", limit=args.n).records
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in task_prompts(tokenizer, tasks, None)]
    draft = first_layers(model, args.draft_layers)

    rows = [
        ("without", None, 1),
        (f"prompt lookup ({args.lookup} tokens)", Speculation(prompt_lookup=args.lookup), 1),
        (
            f"draft model (SmolLM2 first {args.draft_layers}/30 layers)",
            Speculation(draft=draft, draft_name=f"first {args.draft_layers} layers"),
            1,
        ),
        ("without, batched (engine batching, ≤ 8 together)", None, 8),
    ]
    print(f"machine: {machine()}")
    print(f"model: SmolLM2-135M-Instruct (bundled), {len(prompts)} arithmetic prompts, greedy, max {args.max_tokens}")
    results = []
    for name, speculation, batch in rows:
        served = ServedModel(model, tokenizer, "smollm2", speculation=speculation)
        results.append((name, run(served, prompts, args.max_tokens, batch)))
        print(f"  done: {name}", flush=True)

    plain = results[0][1]
    print()
    print("| decoding | requests | generated tokens | s | tokens/s | vs without | acceptance | same text |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results:
        rate = r["tokens"] / r["seconds"]
        ratio = rate / (plain["tokens"] / plain["seconds"])
        acceptance = f"{r['acceptance']:.0%} of {r['drafted']}" if r["acceptance"] is not None else "–"
        same = sum(a == b for a, b in zip(r["texts"], plain["texts"], strict=True))
        print(
            f"| {name} | {len(prompts)} | {r['tokens']} | {r['seconds']:.1f} | {rate:.1f} | {ratio:.2f}x | "
            f"{acceptance} | {same}/{len(prompts)} |"
        )


if __name__ == "__main__":
    main()
