"""Measure what one training step adds to a process's peak memory on CPU, in a fresh process.

    MALLOC_MMAP_THRESHOLD_=4096 python -m tests.models.measure_memory \
        '[{"model_dir": "DIR", "method": {"name": "lora"}, "batch": 2, "seq": 128, "checkpointing": false}]'

Prints, per case, `delta_bytes` = peak RSS during two training steps (forward + backward + AdamW step; the
second runs with the optimizer state the first created, as every later step does) − RSS just before them − the
mapped-file pages (library code) those steps faulted in.
The model is built from its config (random weights: memory does not depend on the values, and no loading transient
inflates the high-water mark); a tiny warm-up forward/backward first absorbs one-time allocations (thread pools,
kernel caches) without creating optimizer state.

MALLOC_MMAP_THRESHOLD_=4096 makes glibc hand every tensor-sized block back to the kernel when it is freed, so RSS
follows the bytes tensors hold (as a GPU allocator's `max_memory_allocated` does); with glibc's default, freed heap
blocks stay resident and fragmentation adds 10-50% on top, varying run to run.
"""

from __future__ import annotations

import gc
import json
import resource
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from thinktune.config import MethodConfig, TrainConfig
from thinktune.data.render import TokenizedSample
from thinktune.methods import MethodContext, apply_method, method_loss, optimizer_parameters
from thinktune.train.engine.losses import causal_lm_loss
from thinktune.train.engine.optim import build_optimizer
from thinktune.train.policy import token_logprobs


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def file_rss() -> int:
    """Resident pages of mapped files (libtorch's code): they grow when new code paths run, and are no training
    memory."""
    try:
        return _status_kib("RssFile")
    except (OSError, KeyError):
        return 0


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux ≥ 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_rss() -> int:
    """The kernel's peak-RSS mark of this process (VmHWM), which `reset_peak` resets.

    Not `resource.getrusage(RUSAGE_SELF).ru_maxrss`: that also counts the RSS the process had before exec, i.e. the
    forked copy of the parent (a pytest process of 500+ MiB), and then reports the parent's size, not ours."""
    try:
        return _status_kib("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def step(model, cfg, batch, optimizer=None, keep: int | None = None) -> None:
    if keep is None:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = causal_lm_loss(logits, batch["labels"])
        del logits
    else:  # GRPO's pass: the LM head on the last `keep` positions only, per-token log-probs, an advantage-weighted mean
        logps = token_logprobs(model, batch, keep=keep)
        loss = -(logps * batch["advantages"][:, None]).mean()
        del logps
    extra = method_loss(model, cfg)
    if extra is not None:
        loss = loss + extra
    loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    else:
        model.zero_grad(set_to_none=True)


def random_batch(vocab: int, batch: int, seq: int, keep: int | None = None) -> dict[str, torch.Tensor]:
    """Random tokens; every other row ends in padding, as the recipe's padded batches do (so SDPA gets a mask).
    With `keep` (GRPO): labels on the last `keep` tokens only, and a random advantage per row."""
    ids = torch.randint(3, vocab, (batch, seq))
    mask = torch.ones_like(ids)
    mask[1::2, seq - max(1, seq // 8) :] = 0
    labels = ids.masked_fill(mask == 0, -100)
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if keep is not None:
        labels[:, : seq - keep] = -100
        out["advantages"] = torch.randn(batch)
    return out


def measure(
    model_dir: str,
    method: MethodConfig,
    batch: int,
    seq: int,
    checkpointing: bool = False,
    keep: int | None = None,
    steps: int = 2,
) -> dict:
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    data = random_batch(config.vocab_size, batch, seq, keep)
    samples = [TokenizedSample(r.tolist(), r.tolist()) for r in data["input_ids"][:8]]
    model = apply_method(model, method, MethodContext(samples=samples, total_steps=10))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    model.train()
    optimizer = build_optimizer(optimizer_parameters(model, method), TrainConfig(learning_rate=1e-5))
    step(model, method, random_batch(config.vocab_size, 1, 8))  # warm-up, no optimizer state
    gc.collect()
    was_reset = reset_peak()
    before, files_before = current_rss(), file_rss()
    for _ in range(steps):
        step(model, method, data, optimizer, keep)
    peak, code = peak_rss(), file_rss() - files_before  # mapped-file pages only grow: subtract what was added
    return {
        "delta_bytes": peak - before - code,
        "rss_before": before,
        "peak_rss": peak,
        "file_pages_added": code,
        "peak_reset": was_reset,
    }


def main() -> None:
    torch.set_num_threads(1)  # a busy 2-core machine thrashes with two; memory does not depend on it
    """argv[1]: a JSON list of cases {model_dir, method: {MethodConfig fields}, batch, seq, checkpointing, keep};
    prints a JSON list of results. Cases run one after another in this process: each frees its model and resets the
    peak mark, so one interpreter start serves them all (`peak_reset` false → only the first case is trustworthy)."""
    results = []
    for case in json.loads(sys.argv[1]):
        results.append(
            measure(
                case["model_dir"],
                MethodConfig(**case["method"]),
                case["batch"],
                case["seq"],
                case.get("checkpointing", False),
                case.get("keep"),
            )
        )
        gc.collect()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
