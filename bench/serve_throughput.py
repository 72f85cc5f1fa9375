"""Throughput of `thinktune serve` (dynamic batching) against the servers users would otherwise pick — a server that
answers one request at a time with plain Hugging Face `generate()`, and `transformers serve --continuous-batching` —
same model, same prompts, greedy, all over HTTP on 127.0.0.1 — and `thinktune serve --backend llamacpp` on the same
model exported as a GGUF, beside llama.cpp alone (one request at a time through llama-cpp-python's `Llama`).

    python bench/serve_throughput.py                                  # bundled SmolLM2-135M-Instruct, all servers
    python bench/serve_throughput.py MODEL_DIR --clients 16 --requests 48 --max-tokens 32
    python bench/serve_throughput.py --peers thinktune,transformers   # a subset
    python bench/serve_throughput.py --peers thinktune,llamacpp,llama-alone --clients 1,4,16 --threads 2

`llamacpp` serves `--gguf FILE`, or the model exported with `thinktune export --format gguf --gguf-type q8_0` (once,
into a temporary folder); `llama-alone` runs only at 1 client (it answers one request at a time anyway).

`thinktune` and `naive` run in this process; `transformers serve` runs as a subprocess with its default settings
(its paged KV cache takes 60 % of free RAM on a CPU), offline, pinned to the model directory, on the same device, dtype
and torch thread count. It needs `pip install 'transformers[serving]'`; without it that server is skipped.

Prints a table: requests/s, generated tokens/s (each server's `usage.completion_tokens`), latency p50/p99, thinktune
serve's ratio against each other server, empty completions, and how many match the first server's text (greedy
decoding of one model: they should all match, up to the rounding of batched float math).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
PEERS = ("naive", "thinktune", "transformers", "llamacpp", "llama-alone")
SUBJECT_PEERS = ("thinktune", "llamacpp")  # the servers whose ratio against the others is printed
SUBJECTS = ["apples", "books", "coins", "marbles", "pencils", "stickers", "cookies", "stamps"]
SERVING_PACKAGES = ("fastapi", "uvicorn", "pydantic", "openai")  # what transformers' is_serve_available() checks


def prompts(n: int) -> list[str]:
    return [
        f"Sam has {3 + i % 7} bags with {2 + i % 5} {SUBJECTS[i % len(SUBJECTS)]} in each. "
        f"He gives away {i % 4}. How many {SUBJECTS[i % len(SUBJECTS)]} does he have left? Explain briefly."
        for i in range(n)
    ]


def naive_app(served: ServedModel) -> FastAPI:
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


def llama_alone_app(served: ServedModel, gguf: str, threads: int) -> FastAPI:
    """llama.cpp by itself: one `Llama`, a lock, the same rendered prompt ids, greedy."""
    import llama_cpp

    llm = llama_cpp.Llama(gguf, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    tokenizer, lock = served.tokenizer, threading.Lock()
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        prompt = tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with lock:
            out = llm.create_completion(ids, max_tokens=body["max_tokens"], temperature=0.0, top_k=1)
        return {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out["choices"][0]["text"]}}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": out["usage"]["completion_tokens"]},
        }

    return app


def exported_gguf(path: str) -> str:
    """The model exported as q8_0 GGUF by thinktune itself, into a temporary folder."""
    from thinktune.export import ExportOptions, run_export

    out = tempfile.mkdtemp(prefix="bench-gguf-")
    record = run_export(ModelConfig(name_or_path=path), "gguf", out, ExportOptions(gguf_type="q8_0"))
    return record["artefact"]


def missing_serving_packages() -> list[str]:
    return [name for name in SERVING_PACKAGES if importlib.util.find_spec(name) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def transformers_serve(served: ServedModel, path: str, timeout: float = 600) -> Iterator[str]:
    """`transformers serve` in a subprocess, pinned to `path` (requests must name it), offline; yields its URL once
    it lists its model, which it loads before it listens."""
    port = free_port()
    dtype = str(served.model.dtype).removeprefix("torch.")
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", path, "--continuous-batching"]
    command += ["--device", str(served.model.device), "--dtype", dtype, "--host", "127.0.0.1", "--port", str(port)]
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",  # the CLI asks PyPI for a newer transformers otherwise
        "OMP_NUM_THREADS": str(torch.get_num_threads()),  # as many torch threads as the in-process servers
    }
    log = tempfile.NamedTemporaryFile("w+", prefix="transformers-serve-", suffix=".log", delete=False)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {process.returncode}; see {log.name}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"transformers serve did not answer within {timeout:.0f} s; see {log.name}")
            try:
                if httpx.get(url + "/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        if sys.exc_info()[0] is None:  # the log is kept only to explain a failure
            os.unlink(log.name)


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    tokens: int
    latencies: list[float]
    answers: dict[str, tuple[str, int]]  # question -> (completion text, completion_tokens)

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
    latencies, tokens, answers = [], [0], {}

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
                elapsed = time.perf_counter() - start
                r.raise_for_status()
                reply = r.json()
                text, n = reply["choices"][0]["message"]["content"] or "", reply["usage"]["completion_tokens"]
                with lock:
                    latencies.append(elapsed)
                    tokens[0] += n
                    answers[question] = (text, n)

    warm_up = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    httpx.post(url + "/v1/chat/completions", json=warm_up, timeout=600).raise_for_status()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return Result(name, len(latencies), time.perf_counter() - start, tokens[0], latencies, answers)


def batch_sizes(metrics: str) -> tuple[float, float]:
    """(batches, requests in them) from the server's Prometheus text; the warm-up request included."""
    value = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if line[:1] != "#"}
    return value["thinktune_batch_size_count"], value["thinktune_batch_size_sum"]


def print_table(results: dict[str, Result]) -> None:
    header = ["server", "requests", "wall s", "req/s", "tokens/s", "p50 s", "p99 s"]
    rows = [header] + [r.row for r in results.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    for subject in SUBJECT_PEERS:
        if (ours := results.get(subject)) is None:
            continue
        for peer, other in results.items():
            if peer != subject and not (subject == "thinktune" and peer == "llamacpp"):
                print(
                    f"{subject} vs {peer}: {ours.requests / ours.seconds / (other.requests / other.seconds):.2f}x "
                    f"requests/s, {ours.tokens / ours.seconds / (other.tokens / other.seconds):.2f}x tokens/s"
                )


def print_sanity(results: dict[str, Result]) -> None:
    """Greedy decoding of one model: every server should give the same, non-empty text for a prompt, and count the
    same tokens for the same text."""
    empty = {peer: sum(not text.strip() for text, _ in r.answers.values()) for peer, r in results.items()}
    print("empty completions: " + ", ".join(f"{peer} {n}/{results[peer].requests}" for peer, n in empty.items()))
    (first, reference), *others = results.items()
    for peer, r in others:
        same = [q for q, answer in r.answers.items() if q in reference.answers and answer[0] == reference.answers[q][0]]
        miscounted = sum(r.answers[q][1] != reference.answers[q][1] for q in same)
        print(
            f"{peer} vs {first}: same text for {len(same)}/{len(r.answers)} prompts"
            + (f", but {miscounted} of them with a different completion_tokens" if miscounted else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None, help="model directory (default: bundled SmolLM2)")
    parser.add_argument("--clients", default="16", help="concurrent clients; a comma list runs each: 1,4,16")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch/llama.cpp CPU threads (default: torch's)")
    parser.add_argument("--gguf", default=None, help="GGUF for llamacpp / llama-alone (default: export q8_0)")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"servers to run, comma-separated: {','.join(PEERS)}")
    args = parser.parse_args()
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if not peers or set(peers) - set(PEERS):
        parser.error(f"--peers: choose from {', '.join(PEERS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if "transformers" in peers and (missing := missing_serving_packages()):
        print(f"skipping transformers serve: {', '.join(missing)} missing; pip install 'transformers[serving]'")
        peers.remove("transformers")
    if not peers:
        return

    path = args.model or str(resolve_model(DEFAULT_MODEL).path)
    served = load_served_model(ModelConfig(name_or_path=path), {}, base_name="bench")
    questions = prompts(args.requests)
    gguf = args.gguf or (exported_gguf(path) if {"llamacpp", "llama-alone"} & set(peers) else None)
    for clients in [int(c) for c in args.clients.split(",")]:
        print(
            f"\nmodel {path} | gguf {gguf} | {clients} clients, {args.requests} requests, max_tokens "
            f"{args.max_tokens}, greedy | torch threads {torch.get_num_threads()}"
        )
        run_peers(peers, served, path, gguf, questions, clients, args)


def run_peers(peers, served, path, gguf, questions, clients, args) -> None:
    results: dict[str, Result] = {}
    batches = None
    for peer in PEERS:
        if peer not in peers or (peer == "llama-alone" and clients != 1):
            continue
        if peer == "naive":
            with BackgroundServer(naive_app(served)) as server:
                results[peer] = drive("naive: HF generate, 1 at a time", server.url, "bench", questions,
                                      clients, args.max_tokens)  # fmt: skip
        elif peer == "thinktune":
            cfg = ServeConfig(max_batch_size=args.max_batch_size, max_queue=max(64, args.requests), request_timeout=600)
            with BackgroundServer(create_app(served, cfg), request_timeout=cfg.request_timeout) as server:
                results[peer] = drive(f"thinktune serve (batch <= {args.max_batch_size})", server.url, "bench",
                                      questions, clients, args.max_tokens)  # fmt: skip
                batches = batch_sizes(httpx.get(server.url + "/metrics").text)
        elif peer == "llamacpp":
            results[peer] = drive_llamacpp(served, path, gguf, questions, clients, args)
        elif peer == "llama-alone":
            threads = args.threads or torch.get_num_threads()
            with BackgroundServer(llama_alone_app(served, gguf, threads)) as server:
                results[peer] = drive("llama.cpp alone, 1 at a time", server.url, "bench", questions, clients,
                                      args.max_tokens)  # fmt: skip
        else:
            with transformers_serve(served, path) as url:
                results[peer] = drive("transformers serve --continuous-batching", url, path, questions,
                                      clients, args.max_tokens)  # fmt: skip
    print_table(results)
    if batches is not None:
        print(f"thinktune serve ran {batches[0]:.0f} batches, {batches[1] / batches[0]:.1f} requests each on average")
    print_sanity(results)


def drive_llamacpp(served, path, gguf, questions, clients, args) -> Result:
    from thinktune.serve.llamacpp_backend import LlamaCppEngine, ServedGguf

    cfg = ServeConfig(max_batch_size=args.max_batch_size, max_queue=max(64, args.requests), request_timeout=600)
    model = ServedGguf(gguf, served.tokenizer, "bench", 2048)
    engine = LlamaCppEngine(model, cfg.max_batch_size, cfg.max_queue, args.threads or torch.get_num_threads())
    with BackgroundServer(create_app(model, cfg, engine=engine), request_timeout=cfg.request_timeout) as server:
        return drive(f"thinktune serve --backend llamacpp (slots {args.max_batch_size})", server.url, "bench",
                     questions, clients, args.max_tokens)  # fmt: skip


if __name__ == "__main__":
    main()
