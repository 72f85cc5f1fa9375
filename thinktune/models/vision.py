"""How a vision-language model takes images: its image processor, the text an image becomes in the chat template,
and the image token repeated once per merged patch (Qwen2-VL family: `<|vision_start|><|image_pad|><|vision_end|>`,
`<|image_pad|>` × grid_t·grid_h·grid_w / merge²).

    vision = load_vision(model, source)          # None for a text-only model
    vision.tokens(paths)                         # image tokens per image (what the sample's text expands to)
    vision.pixels(paths)                         # {"pixel_values", "image_grid_thw"} for the model's forward

The image processor is the model's own (`preprocessor_config.json`), loaded in its PIL implementation: it needs no
torchvision, and it is the one the processor would use for still images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from thinktune.errors import ModelNotFoundError
from thinktune.models.registry import arch_facts


@dataclass
class Vision:
    processor: Any  # the model's image processor
    image_text: str  # what one <image> placeholder becomes before the chat template
    image_token_id: int  # the token the model replaces by vision features, repeated per merged patch
    merge: int  # spatial merge size: image tokens = grid cells / merge²

    def _process(self, paths: list[str]) -> dict[str, torch.Tensor]:
        from PIL import Image

        images = []
        for p in paths:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        return self.processor(images=images, return_tensors="pt")

    def tokens(self, paths: list[str]) -> list[int]:
        if not paths:
            return []
        grid = self._process(paths)["image_grid_thw"]
        return [int(g.prod()) // self.merge**2 for g in grid]

    def pixels(self, paths: list[str]) -> dict[str, torch.Tensor]:
        out = self._process(paths)
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def key(self) -> dict[str, Any]:
        """What decides the token layout (part of the data cache key)."""
        return {"image_text": self.image_text, "token": self.image_token_id, "processor": self.processor.to_dict()}


def load_vision(model: Any, path: Path) -> Vision | None:
    """The model's Vision, or None when it takes no images; a vision-language architecture thinktune does not know,
    or one without its image processor in `path`, is one line."""
    config = getattr(model, "config", None)
    if getattr(config, "vision_config", None) is None:
        return None
    facts = arch_facts(config.model_type)
    if facts is None or facts.image_text is None:
        raise ModelNotFoundError(
            f"{config.model_type}: a vision-language model thinktune does not know how to give images to "
            "(known: qwen2_vl, qwen2_5_vl, qwen3_vl)"
        )
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(path, backend="pil")
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"{path}: no image processor (preprocessor_config.json): {e}") from None
    return Vision(processor, facts.image_text, config.image_token_id, config.vision_config.spatial_merge_size)
