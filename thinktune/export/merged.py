"""Merged export: fold the LoRA/DoRA adapter into the base weights and save a plain transformers checkpoint.

    thinktune export --run-dir runs/quickstart --format merged -o exports/merged

Out: sharded safetensors (`model-0000x-of-0000y.safetensors` + index past `max_shard_size`), config, generation
config and tokenizer; it loads with `AutoModelForCausalLM.from_pretrained(OUT)` and needs no PEFT.
Verified: the reloaded checkpoint's logits against the unmerged PeftModel's on the test prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from thinktune.errors import UserError
from thinktune.export.parity import (
    directory_bytes,
    greedy_agreement,
    max_abs_diff,
    top1_agreement,
    torch_greedy,
    torch_logits,
)
from thinktune.export.source import ExportOptions, ExportSource, stop_ids


def check(model_type: str, options: ExportOptions) -> None:
    if options.merged_dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise UserError(f"merged dtype '{options.merged_dtype}': choose auto, float32, bfloat16 or float16")


def save_merged(source: ExportSource, out: Path, max_shard_size: str = "2GB", dtype: str = "auto") -> Path:
    """Merge in float32, then store in `dtype` (`auto`: the dtype the base checkpoint was stored in)."""
    model = source.merge()
    model.to(getattr(torch, source.checkpoint_dtype if dtype == "auto" else dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    source.tokenizer.save_pretrained(out)
    return out


def export_merged(source: ExportSource, out: Path, options: ExportOptions) -> dict[str, Any]:
    ids = source.chat_ids(options.prompts)
    stops = stop_ids(source.tokenizer, source.model)
    adapter_type = _adapter_type(source)
    reference = [torch_logits(source.model, x) for x in ids]  # before the merge: base + adapter as trained
    reference_greedy = [torch_greedy(source.model, x, options.max_new_tokens, stops) for x in ids]

    save_merged(source, out, options.max_shard_size, options.merged_dtype)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    logits = [torch_logits(reloaded, x) for x in ids]
    greedy = [torch_greedy(reloaded, x, options.max_new_tokens, stops) for x in ids]
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    return {
        "artefact": str(out),
        "adapter": adapter_type,
        "compared_with": "unmerged PeftModel" if adapter_type else "source model",
        "max_abs_logit_diff": max_abs_diff(reference, logits),
        "top1_agreement": top1_agreement(reference, logits),
        "greedy": greedy_agreement(reference_greedy, greedy),
        "dtype": json.loads((out / "config.json").read_text()).get("dtype"),
        "shards": len(shards),
        "bytes": directory_bytes(*(out / s for s in shards)),
    }


def _adapter_type(source: ExportSource) -> str | None:
    """`lora`, `dora` (…) for an unmerged PeftModel, None for a plain model."""
    config = getattr(source.model, "peft_config", {}).get("default")
    if config is None:
        return None
    kind = str(getattr(config, "peft_type", "adapter")).split(".")[-1].lower()
    return "dora" if getattr(config, "use_dora", False) else kind
