"""Prometheus metrics of one server, in its own registry (no process-global state: tests run several servers).

thinktune_requests_total{endpoint,status}     requests answered, by HTTP status (429, 504, ... included)
thinktune_request_duration_seconds{endpoint}  time to the last byte (a whole stream for stream requests)
thinktune_queue_depth                         requests waiting for the model
thinktune_queue_limit                         serve.max_queue: waiting requests beyond which the server answers 429
thinktune_running_requests                    requests in the batch being generated
thinktune_batch_size                          rows per generate() call
thinktune_prompt_tokens_total{model}          prompt tokens of finished requests
thinktune_generated_tokens_total{model}       tokens generated for finished requests
thinktune_memory_limit_bytes                  memory the process may use: the container's cgroup limit, else the
                                              machine's physical memory
process_resident_memory_bytes, process_*      prometheus_client's process collector (Linux /proc)
thinktune_draft_tokens_total                  speculative decoding: tokens drafted
thinktune_draft_tokens_accepted_total         speculative decoding: drafted tokens the model kept

The alert rules `thinktune deploy` writes (serve/alerts.py) are expressions over these names.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

# 2 s is a bucket bound because it is the default P99 alert threshold: histogram_quantile then needs no
# interpolation across the threshold to tell whether P99 is above it.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CONTENT_TYPE = CONTENT_TYPE_LATEST

# cgroup v2 (one file, "max" when unlimited), then cgroup v1 (a huge number when unlimited).
CGROUP_MEMORY_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def memory_limit_bytes(cgroup_files: tuple[Path, ...] = CGROUP_MEMORY_LIMITS) -> float:
    """The container's memory limit, or the machine's physical memory when there is none (or it is larger)."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in cgroup_files:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return float(min(int(text), physical))
    return float(physical)


class ServerMetrics:
    def __init__(self, queue_depth: Callable[[], int], running: Callable[[], int], max_queue: int):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("thinktune_requests", "Requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "thinktune_request_duration_seconds", "Request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )
        Gauge("thinktune_queue_depth", "Requests waiting for the model", registry=r).set_function(queue_depth)
        Gauge("thinktune_queue_limit", "Waiting requests beyond which the server answers 429", registry=r).set(
            max_queue
        )
        Gauge("thinktune_running_requests", "Requests being generated", registry=r).set_function(running)
        self.batch_size = Histogram("thinktune_batch_size", "Rows per batch", buckets=BATCH_BUCKETS, registry=r)
        self.prompt_tokens = Counter("thinktune_prompt_tokens", "Prompt tokens", ["model"], registry=r)
        self.generated_tokens = Counter("thinktune_generated_tokens", "Generated tokens", ["model"], registry=r)
        Gauge("thinktune_memory_limit_bytes", "Container memory limit (else physical memory)", registry=r).set_function(
            memory_limit_bytes
        )
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self.draft_tokens = Counter("thinktune_draft_tokens", "Speculative decoding: drafted tokens", registry=r)
        self.accepted_tokens = Counter(
            "thinktune_draft_tokens_accepted", "Speculative decoding: drafted tokens kept", registry=r
        )

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_tokens(self, model: str, prompt: int, generated: int) -> None:
        self.prompt_tokens.labels(model).inc(prompt)
        self.generated_tokens.labels(model).inc(generated)

    def observe_draft(self, drafted: int, accepted: int) -> None:
        self.draft_tokens.inc(drafted)
        self.accepted_tokens.inc(accepted)

    def render(self) -> bytes:
        return generate_latest(self.registry)
