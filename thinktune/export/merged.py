"""Merged export: fold the LoRA/DoRA adapter into the base weights and save a plain transformers checkpoint.

    thinktune export --run-dir runs/quickstart --format merged -o exports/merged

Out: sharded safetensors (`model-0000x-of-0000y.safetensors` + index past `max_shard_size`), config, generation
config and tokenizer; it loads with `AutoModelForCausalLM.from_pretrained(OUT)` and needs no PEFT. A vision-language
model (Qwen2.5-VL, ...) keeps its vision tower and gets the base's image processor and processor files beside it
(`preprocessor_config.json`, ...); it loads with `AutoModelForImageTextToText.from_pretrained(OUT)`.
Verified: the reloaded checkpoint's logits against the unmerged PeftModel's on the test prompts, and for a
vision-language model also on a prompt with an image (a synthetic gradient: the figures cover the vision tower and
the image tokens' positions too).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thinktune.errors import UserError
from thinktune.export.parity import (
    directory_bytes,
    greedy_agreement,
    max_abs_diff,
    top1_agreement,
    torch_greedy,
    torch_logits,
)
from thinktune.export.source import ExportOptions, ExportSource, stop_ids, takes_images
from thinktune.models.loading import ModelSource, model_class
from thinktune.models.vision import Vision, load_vision

# What a vision-language base has beside its weights and tokenizer, for its processor (AutoProcessor) to load.
PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "chat_template.json",
    "chat_template.jinja",
)
IMAGE_PROMPT = "<image>Describe this picture."


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
    copy_processor_files(source.origin, out)
    return out


def copy_processor_files(origin: ModelSource, out: Path) -> list[str]:
    """The base's processor files the checkpoint lacks (what the tokenizer wrote, e.g. a configured chat template,
    stays)."""
    if origin.gguf_file:
        return []
    copied = []
    for name in PROCESSOR_FILES:
        if (origin.path / name).is_file() and not (out / name).exists():
            shutil.copy2(origin.path / name, out / name)
            copied.append(name)
    return copied


def export_merged(source: ExportSource, out: Path, options: ExportOptions) -> dict[str, Any]:
    ids = source.chat_ids(options.prompts)
    stops = stop_ids(source.tokenizer, source.model)
    adapter_type = _adapter_type(source)
    vision = load_vision(source.model, source.origin.path) if takes_images(source.model.config) else None
    with_image = image_prompts(source, vision)
    # before the merge: base + adapter as trained
    reference = [torch_logits(source.model, x) for x in ids]
    reference_images = [torch_logits(source.model, x, pixels) for x, pixels in with_image]
    reference_greedy = [torch_greedy(source.model, x, options.max_new_tokens, stops) for x in ids]

    save_merged(source, out, options.max_shard_size, options.merged_dtype)
    reloaded = model_class(ModelSource(out)).from_pretrained(out, dtype=torch.float32).eval()
    logits = [torch_logits(reloaded, x) for x in ids]
    logits_images = [torch_logits(reloaded, x, pixels) for x, pixels in with_image]
    greedy = [torch_greedy(reloaded, x, options.max_new_tokens, stops) for x in ids]
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    record = {
        "artefact": str(out),
        "adapter": adapter_type,
        "compared_with": "unmerged PeftModel" if adapter_type else "source model",
        "max_abs_logit_diff": max_abs_diff(reference + reference_images, logits + logits_images),
        "top1_agreement": top1_agreement(reference + reference_images, logits + logits_images),
        "greedy": greedy_agreement(reference_greedy, greedy),  # text prompts
        "dtype": json.loads((out / "config.json").read_text()).get("dtype"),
        "shards": len(shards),
        "bytes": directory_bytes(*(out / s for s in shards)),
    }
    if with_image:
        record["image_prompts"] = {
            "count": len(with_image),
            "max_abs_logit_diff": max_abs_diff(reference_images, logits_images),
            "top1_agreement": top1_agreement(reference_images, logits_images),
        }
    return record


def image_prompts(source: ExportSource, vision: Vision | None) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
    """(token ids, pixel inputs) of a one-turn chat asking about a synthetic image; none for a text-only model."""
    if vision is None:
        return []
    image = gradient_image()
    messages = vision.messages([{"role": "user", "content": IMAGE_PROMPT}])
    text = source.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return [(vision.prompt_ids(source.tokenizer, text, [image]), vision.pixels([image]))]


def gradient_image(size: int = 56):
    """A deterministic RGB image with structure in both directions (red across, green down): 56×56 is the
    Qwen2-VL processors' minimum area, so it becomes the fewest image tokens the model takes."""
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[..., 0] = ramp[None, :]
    pixels[..., 1] = ramp[:, None]
    pixels[..., 2] = 128
    return Image.fromarray(pixels)


def _adapter_type(source: ExportSource) -> str | None:
    """`lora`, `dora` (…) for an unmerged PeftModel, None for a plain model."""
    config = getattr(source.model, "peft_config", {}).get("default")
    if config is None:
        return None
    kind = str(getattr(config, "peft_type", "adapter")).split(".")[-1].lower()
    return "dora" if getattr(config, "use_dora", False) else kind
