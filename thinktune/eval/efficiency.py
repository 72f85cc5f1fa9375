"""Inference efficiency at batch 1 and batch N: time to first token, per-request latency percentiles, generated
tokens/s and peak memory, all with greedy decoding (deterministic, so two runs generate the same tokens).

Prompts are the text the model sees (`thinktune.data.render.render_prompt`); each prompt is one request. At batch N a
request waits for its whole batch, so its latency is that batch's wall time.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from thinktune.eval.generate import batched, generate_batch


def _sync(model: PreTrainedModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def _timed_generate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_new_tokens: int
) -> tuple[float, list[tuple[str, int]]]:
    _sync(model)
    start = time.perf_counter()
    out = generate_batch(model, tokenizer, prompts, max_new_tokens)
    _sync(model)
    return time.perf_counter() - start, out


def peak_rss_bytes() -> int:
    """The process's resident-set high-water mark since it started (it never goes down)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def current_rss_bytes() -> int | None:
    """Resident memory now, from /proc/self/statm (Linux only; None elsewhere)."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        return None
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _percentiles(values: list[float], name: str) -> dict[str, float]:
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {f"{name}_p50": float(p50), f"{name}_p95": float(p95), f"{name}_p99": float(p99)}


def _measure(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_new_tokens: int, bs: int
) -> dict[str, Any]:
    on_cuda = model.device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(model.device)
    rss_before = peak_rss_bytes()
    chunks = list(batched(prompts, bs))
    # Time to first token = a generate of one token: prefill plus the first decoding step.
    ttft: list[float] = []
    for chunk in chunks:
        seconds, _ = _timed_generate(model, tokenizer, chunk, 1)
        ttft += [seconds] * len(chunk)
    latency: list[float] = []
    tokens, wall = 0, 0.0
    for chunk in chunks:
        seconds, out = _timed_generate(model, tokenizer, chunk, max_new_tokens)
        latency += [seconds] * len(chunk)
        tokens += sum(n for _, n in out)  # up to and including the end-of-turn token, per row
        wall += seconds
    result: dict[str, Any] = {
        "batch_size": bs,
        "requests": len(prompts),
        "ttft_s_mean": float(np.mean(ttft)),
        **_percentiles(ttft, "ttft_s"),
        "latency_s_mean": float(np.mean(latency)),
        **_percentiles(latency, "latency_s"),
        "generated_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall if wall > 0 else 0.0,
    }
    if on_cuda:
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated(model.device)
    else:
        result["peak_memory_bytes"] = peak_rss_bytes()
        # Growth of the process high-water mark: 0 when an earlier step (loading, a larger batch) already peaked.
        result["peak_rss_delta_bytes"] = result["peak_memory_bytes"] - rss_before
        result["rss_bytes"] = current_rss_bytes()
    return result


def measure_efficiency(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    batch_sizes: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """One entry in "results" per batch size (default: 1 and all prompts at once), in the order given.

    "memory_source" says what "peak_memory_bytes" is: "cuda_max_memory_allocated" (tensors on the GPU, peak since
    this batch size started) or "cpu_peak_rss" (the whole process's resident high-water mark, with its growth
    during this batch size in "peak_rss_delta_bytes" and the resident size afterwards in "rss_bytes")."""
    if not prompts:
        raise ValueError("measure_efficiency needs at least one prompt")
    sizes = list(dict.fromkeys(batch_sizes or (1, len(prompts))))
    if any(b < 1 for b in sizes):
        raise ValueError(f"batch sizes must be ≥ 1, got {sizes}")
    model.eval()
    generate_batch(model, tokenizer, prompts[:1], 1)  # warm-up: first-call costs (kernels, caches) are not latency
    return {
        "device": str(model.device),
        "memory_source": "cuda_max_memory_allocated" if model.device.type == "cuda" else "cpu_peak_rss",
        "requests": len(prompts),
        "max_new_tokens": max_new_tokens,
        "batch_sizes": sizes,
        "results": [_measure(model, tokenizer, prompts, max_new_tokens, bs) for bs in sizes],
    }
