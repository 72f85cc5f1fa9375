"""Throughput of `thinktune serve` (dynamic batching) vs a server that answers one request at a time with plain
Hugging Face `generate()` — same model, same prompts, greedy, both over HTTP on 127.0.0.1.

    python bench/serve_throughput.py                                  # bundled SmolLM2-135M-Instruct
    python bench/serve_throughput.py MODEL_DIR --clients 16 --requests 48 --max-tokens 32

Prints a table: requests/s, generated tokens/s, latency p50/p99, and the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import dataclass

import httpx
import torch
from fastapi import FastAPI

from thinktune.config import ModelConfig, ServeConfig
from thinktune.eval.generate import stop_token_ids
from thinktune.models.loading import resolve_model
from thinktune.serve.adapters import ServedModel, load_served_model
from thinktune.serve.app import create_app
from thinktune.serve.server import BackgroundServer

DEFAULT_MODEL = "smollm2-135m-instruct"
SUBJECTS = ["apples", "books", "coins", "marbles", "pencils", "stickers", "cookies", "stamps"]


def prompts(n: int) -> list[str]:
    return [
        f"Sam has {3 + i % 7} bags with {2 + i % 5} {SUBJECTS[i % len(SUBJECTS)]} in each. "
        f"He gives away {i % 4}. How many {SUBJECTS[i % len(SUBJECTS)]} does he have left? Explain briefly."
        for i in range(n)
    ]


def baseline_app(served: ServedModel) -> FastAPI:
    """The simplest correct server: a lock around model.generate(), one request at a time."""
    model, tokenizer = served.model, served.tokenizer
    stops, lock = stop_token_ids(tokenizer, model), threading.Lock()
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:  # a sync handler: FastAPI runs it in its thread pool
        prompt = tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
        enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with lock, torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=body["max_tokens"],
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        ids = out[0, enc["input_ids"].shape[1] :].tolist()
        n = next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))
        text = tokenizer.decode(ids[:n], skip_special_tokens=True)
        return {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": enc["input_ids"].shape[1], "completion_tokens": n},
        }

    return app


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    tokens: int
    latencies: list[float]

    @property
    def row(self) -> list[str]:
        q = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return [
            self.name,
            str(self.requests),
            f"{self.seconds:.1f}",
            f"{self.requests / self.seconds:.2f}",
            f"{self.tokens / self.seconds:.1f}",
            f"{q[49]:.2f}",
            f"{q[98]:.2f}",
        ]


def drive(name: str, url: str, model: str, questions: list[str], clients: int, max_tokens: int) -> Result:
    """`clients` threads take the questions one by one from a shared list until it is empty."""
    work, lock, ready = list(reversed(questions)), threading.Lock(), threading.Barrier(clients + 1)
    latencies, tokens = [], [0]

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            ready.wait()  # all clients start together, as a burst of users would
            while True:
                with lock:
                    if not work:
                        return
                    question = work.pop()
                body = {"model": model, "messages": [{"role": "user", "content": question}]}
                start = time.perf_counter()
                r = http.post("/v1/chat/completions", json=body | {"max_tokens": max_tokens, "temperature": 0})
                r.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - start)
                    tokens[0] += r.json()["usage"]["completion_tokens"]

    warm_up = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    httpx.post(url + "/v1/chat/completions", json=warm_up, timeout=600)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return Result(name, len(latencies), time.perf_counter() - start, tokens[0], latencies)


def batch_sizes(metrics: str) -> tuple[float, float]:
    """(batches, requests in them) from the server's Prometheus text; the warm-up request included."""
    value = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if line[:1] != "#"}
    return value["thinktune_batch_size_count"], value["thinktune_batch_size_sum"]


def print_table(results: list[Result]) -> None:
    header = ["server", "requests", "wall s", "req/s", "tokens/s", "p50 s", "p99 s"]
    rows = [header] + [r.row for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    base, ours = results
    print(
        f"speed-up: {ours.requests / ours.seconds / (base.requests / base.seconds):.1f}x requests/s, "
        f"{ours.tokens / ours.seconds / (base.tokens / base.seconds):.1f}x tokens/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None, help="model directory (default: bundled SmolLM2)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    path = args.model or str(resolve_model(DEFAULT_MODEL).path)
    served = load_served_model(ModelConfig(name_or_path=path), {}, base_name="bench")
    questions = prompts(args.requests)
    print(
        f"model {path} | {args.clients} clients, {args.requests} requests, max_tokens {args.max_tokens}, "
        f"greedy | torch threads {torch.get_num_threads()}"
    )

    with BackgroundServer(baseline_app(served)) as server:
        baseline = drive("baseline: HF generate, 1 at a time", server.url, "bench", questions, args.clients,
                         args.max_tokens)  # fmt: skip
    cfg = ServeConfig(max_batch_size=args.max_batch_size, max_queue=max(64, args.requests), request_timeout=600)
    with BackgroundServer(create_app(served, cfg), request_timeout=cfg.request_timeout) as server:
        ours = drive(f"thinktune serve (batch <= {args.max_batch_size})", server.url, "bench", questions,
                     args.clients, args.max_tokens)  # fmt: skip
        batches = batch_sizes(httpx.get(server.url + "/metrics").text)
    print_table([baseline, ours])
    print(f"thinktune serve ran {batches[0]:.0f} batches, {batches[1] / batches[0]:.1f} requests each on average")


if __name__ == "__main__":
    main()
