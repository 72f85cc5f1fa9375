"""Bounded load on a live server: 64 concurrent clients against the tiny model; no 5xx, 429 only when the queue is
configured smaller than the load. Prints p50/p99 latency (`pytest -s` shows them)."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter

import httpx

CLIENTS = 64


def load(server, clients: int, requests_each: int, max_tokens: int = 8) -> list[tuple[int, float]]:
    """Each client sends `requests_each` chat requests one after another; all clients start together."""
    barrier, results, lock = threading.Barrier(clients), [], threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            barrier.wait()
            for j in range(requests_each):
                body = {
                    "messages": [{"role": "user", "content": f"Client {i} asks question {j}: what is {i} + {j}?"}],
                    "max_tokens": max_tokens,
                    "temperature": 0.7,
                }
                start = time.perf_counter()
                r = http.post("/v1/chat/completions", json=body)
                with lock:
                    results.append((r.status_code, time.perf_counter() - start))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(results) == clients * requests_each
    return results


def percentiles(results: list[tuple[int, float]]) -> tuple[float, float]:
    latencies = sorted(s for code, s in results if code == 200)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49], cuts[98]


def test_64_clients_no_errors(start_server):
    server = start_server(max_batch_size=8, max_queue=CLIENTS, adapters=False)
    started = time.perf_counter()
    results = load(server, CLIENTS, requests_each=2)
    wall = time.perf_counter() - started
    codes = Counter(code for code, _ in results)
    assert codes == {200: 2 * CLIENTS}, codes  # queue ≥ clients: nobody is refused, nothing fails
    p50, p99 = percentiles(results)
    print(
        f"\nload: {CLIENTS} clients x 2 requests in {wall:.1f} s ({len(results) / wall:.1f} req/s); "
        f"latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    )
    metrics = httpx.get(server.url + "/metrics").text
    batches = next(line for line in metrics.splitlines() if line.startswith("thinktune_batch_size_count"))
    assert float(batches.split()[-1]) < len(results)  # requests were batched


def test_queue_smaller_than_load_sheds_with_429_only(start_server):
    server = start_server(max_batch_size=4, max_queue=8, adapters=False)
    results = load(server, CLIENTS, requests_each=1, max_tokens=16)
    codes = Counter(code for code, _ in results)
    assert set(codes) == {200, 429}, codes
    assert codes[200] >= 4 + 8  # at least a full batch and a full queue were served
    print(f"\nshedding: {dict(codes)} with max_queue=8, max_batch_size=4")
