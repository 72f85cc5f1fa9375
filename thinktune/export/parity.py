"""How an artefact is compared with its source: logits on the same token ids, and greedy continuations.

A "runner" here is any function `ids -> logits` (seq, vocab) or `ids, n -> greedy ids`, so a transformers model, an
onnxruntime session and a GGUF model read back by transformers are checked by the same code.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch


@torch.inference_mode()
def torch_logits(
    model: torch.nn.Module, ids: Sequence[int], inputs: Mapping[str, torch.Tensor] | None = None
) -> np.ndarray:
    """Logits (seq, vocab) in float32 for one unpadded sequence; `inputs`: more model inputs, e.g. an image prompt's
    `pixel_values` and `image_grid_thw` (models/vision.py)."""
    x = torch.tensor([list(ids)], device=model.device)
    more = {k: v.to(model.device) for k, v in (inputs or {}).items()}
    return model(input_ids=x, attention_mask=torch.ones_like(x), **more).logits[0].float().cpu().numpy()


@torch.inference_mode()
def torch_greedy(model: torch.nn.Module, ids: Sequence[int], n: int, stops: Sequence[int] = ()) -> list[int]:
    """Greedy continuation with the KV cache, stopping after a stop token or `n` tokens."""
    x = torch.tensor([list(ids)], device=model.device)
    cache, out = None, []
    for _ in range(n):
        result = model(input_ids=x, past_key_values=cache, use_cache=True)
        cache = result.past_key_values
        token = int(result.logits[0, -1].argmax())
        out.append(token)
        if token in stops:
            break
        x = torch.tensor([[token]], device=model.device)
    return out


def max_abs_diff(reference: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> float:
    pairs = zip(reference, other, strict=True)
    return float(max(np.abs(a.astype(np.float64) - b.astype(np.float64)).max() for a, b in pairs))


def top1_agreement(reference: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> float:
    """Fraction of positions where both pick the same next token (teacher-forced, so errors do not compound)."""
    same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(reference, other, strict=True))
    return same / sum(a.shape[0] for a in reference)


def greedy_agreement(reference: Sequence[list[int]], other: Sequence[list[int]]) -> dict[str, float]:
    """`identical`: share of prompts with the same continuation; `prefix`: mean share of the reference reproduced
    before the first difference."""
    identical = sum(a == b for a, b in zip(reference, other, strict=True)) / len(reference)
    prefix = statistics.fmean(_common_prefix(a, b) / max(len(a), 1) for a, b in zip(reference, other, strict=True))
    return {"identical": identical, "prefix": prefix}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def directory_bytes(*paths) -> int:
    """Bytes on disk of files and (recursively) directories."""
    total = 0
    for p in map(Path, paths):
        total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return total
