"""Tokenise + pack throughput of the data stage, in records per second, with 1 and 2 processes.

    python bench/data_throughput.py                       # 100k synthetic chat records, bundled SmolLM2 tokenizer
    python bench/data_throughput.py --records 20000 --procs 1 2 4 --json bench.json

Each run is the real `prepare_training_data` (stream JSONL → Arrow → datasets.map tokenisation → loss masks) with
the cache off, then best-fit-decreasing packing into --max-length sequences.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thinktune.cli.data import load_tokenizer_only  # noqa: E402
from thinktune.config import DataConfig  # noqa: E402
from thinktune.data.packing import pack  # noqa: E402
from thinktune.data.prepare import prepare_training_data  # noqa: E402
from thinktune.data.spec import DataOptions  # noqa: E402

WORDS = (
    "the a number total each of and then we so is are apples friends shares keeps buys sells price cost hours "
    "minutes train speed distance twice half three seven twelve sum product difference answer check step first"
).split()


def synthetic_record(rng: random.Random, i: int) -> dict:
    """A chat record with reasoning; 1-3 turns, lengths spread like small reasoning SFT sets."""
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": "You are a careful assistant. Think step by step."})
    for turn in range(rng.choice((1, 1, 1, 2, 3))):
        question = " ".join(rng.choices(WORDS, k=rng.randint(8, 60))) + f" (#{i}.{turn})?"
        steps = "\n".join(
            f"{a} + {b} = {a + b}."
            for a, b in ((rng.randint(1, 99), rng.randint(1, 99)) for _ in range(rng.randint(1, 25)))
        )
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "reasoning_content": steps, "content": f"The answer is \\boxed{{{i}}}."})
    return {"messages": messages, "id": i}


def write_dataset(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps(synthetic_record(rng, i)) + "\n")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the datasets.map workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run(path: Path, tokenizer, procs: int, max_length: int) -> dict:
    cfg = DataConfig(train=[str(path)], test=None, max_length=max_length, max_bad_fraction=1.0)
    c0, t0 = cpu_seconds(), time.perf_counter()
    data = prepare_training_data(cfg, tokenizer, DataOptions(cache=False, num_proc=procs))
    c1, t1 = cpu_seconds(), time.perf_counter()
    packed = pack(data.samples, max_length)
    c2, t2 = cpu_seconds(), time.perf_counter()
    n = data.total_records
    tokens = sum(data.samples.lengths())
    return {
        "procs": procs,
        "records": n,
        "samples": len(data.samples),
        "tokens": tokens,
        "tokenise_seconds": round(t1 - t0, 2),
        "tokenise_records_per_s": round(n / (t1 - t0)),
        "tokenise_cpu_seconds": round(c1 - c0, 2),  # this process + finished workers; wall/CPU shows contention
        "tokenise_records_per_cpu_s": round(n / (c1 - c0)),
        "pack_seconds": round(t2 - t1, 2),
        "pack_records_per_s": round(len(data.samples) / (t2 - t1)),
        "pack_records_per_cpu_s": round(len(data.samples) / max(c2 - c1, 1e-9)),
        "total_records_per_s": round(n / (t2 - t0)),
        "packed_sequences": len(packed),
        "pack_fill": round(tokens / (len(packed) * max_length), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="tokenizer: bundled name, directory or .gguf")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    tokenizer = load_tokenizer_only(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.jsonl"
        t = time.perf_counter()
        write_dataset(path, args.records)
        print(f"wrote {args.records} records ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f}s")
        results = []
        for procs in args.procs:
            r = run(path, tokenizer, procs, args.max_length)
            results.append(r)
            print(
                f"procs={procs}: tokenise {r['tokenise_records_per_s']:,} rec/s ({r['tokenise_seconds']}s wall, "
                f"{r['tokenise_cpu_seconds']}s CPU = {r['tokenise_records_per_cpu_s']:,} rec per CPU-s), "
                f"pack {r['pack_records_per_s']:,} rec/s ({r['pack_seconds']}s), "
                f"end to end {r['total_records_per_s']:,} rec/s; {r['tokens']:,} tokens → "
                f"{r['packed_sequences']:,} sequences of {args.max_length} ({r['pack_fill']:.1%} full)"
            )
    report = {
        "model": args.model,
        "max_length": args.max_length,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
