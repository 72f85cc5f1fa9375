"""How a vision-language model takes images: its image processor, the text an image becomes in the chat template,
and the image token repeated once per merged patch (Qwen2-VL family: `<|vision_start|><|image_pad|><|vision_end|>`,
`<|image_pad|>` × grid_t·grid_h·grid_w / merge²).

    vision = load_vision(model, source)          # None for a text-only model
    vision.tokens(images)                        # image tokens per image (what the sample's text expands to)
    vision.pixels(images)                        # {"pixel_values", "image_grid_thw"} for the model's forward
    vision.prompt_ids(tokenizer, prompt, images) # an inference prompt's token ids, image tokens expanded

An image is a file path or a PIL image (serve decodes the ones requests send).

The image processor is the model's own (`preprocessor_config.json`), loaded in its PIL implementation: it needs no
torchvision, and it is the one the processor would use for still images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from thinktune.data.record_error import RecordError
from thinktune.errors import ModelNotFoundError
from thinktune.models.registry import arch_facts


@dataclass
class Vision:
    processor: Any  # the model's image processor
    image_text: str  # what one <image> placeholder becomes before the chat template
    image_token_id: int  # the token the model replaces by vision features, repeated per merged patch
    merge: int  # spatial merge size: image tokens = grid cells / merge²

    def _process(self, images: list[Any]) -> dict[str, torch.Tensor]:
        from PIL import Image

        rgb = []
        for image in images:
            if isinstance(image, Image.Image):
                rgb.append(image.convert("RGB"))
                continue
            with Image.open(image) as im:
                rgb.append(im.convert("RGB"))
        return self.processor(images=rgb, return_tensors="pt")

    def tokens(self, images: list[Any]) -> list[int]:
        if not images:
            return []
        grid = self._process(images)["image_grid_thw"]
        return [int(g.prod()) // self.merge**2 for g in grid]

    def pixels(self, images: list[Any]) -> dict[str, torch.Tensor]:
        out = self._process(images)
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Messages with each `<image>` placeholder written as the model's image text (before the chat template)."""
        from thinktune.data.images import IMAGE_TOKEN

        return [{**m, "content": m["content"].replace(IMAGE_TOKEN, self.image_text)} for m in messages]

    def expand(
        self, ids: list[int], counts: list[int], labels: list[int] | None = None
    ) -> tuple[list[int], list[int], int]:
        """(ids, labels, images used): each image token repeated once per merged patch of its image (`counts`, in
        order), its labels ignored (-100); RecordError when the text holds more image tokens than there are images."""
        out_ids: list[int] = []
        out_labels: list[int] = []
        k = 0
        for t, y in zip(ids, labels if labels is not None else ids, strict=True):
            if t == self.image_token_id:
                if k >= len(counts):
                    raise RecordError(f"the text holds more image tokens than its {len(counts)} image(s)")
                out_ids += [t] * counts[k]
                out_labels += [-100] * counts[k]
                k += 1
            else:
                out_ids.append(t)
                out_labels.append(y)
        return out_ids, out_labels, k

    def prompt_ids(self, tokenizer: Any, prompt: str, images: list[Any]) -> list[int]:
        """Token ids of a rendered prompt (its images written as `messages` writes them), image tokens expanded; a
        prompt whose image texts and images do not pair up is a RecordError."""
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        expanded, _, used = self.expand(ids, self.tokens(images))
        if used != len(images):
            raise RecordError(f"{len(images)} image(s) for {used} image placeholder(s) in the prompt")
        return expanded

    def key(self) -> dict[str, Any]:
        """What decides the token layout (part of the data cache key)."""
        return {"image_text": self.image_text, "token": self.image_token_id, "processor": self.processor.to_dict()}


def load_vision(model: Any, path: Path) -> Vision | None:
    """The model's Vision, or None when it takes no images; a vision-language architecture thinktune does not know,
    or one without its image processor in `path`, is one line."""
    return vision_of_config(getattr(model, "config", None), path)


def vision_without_weights(path: Path) -> Vision | None:
    """The Vision of the model in directory `path` from its config and image processor alone (no weights loaded):
    what `data inspect` and `plan` need. None when `path` holds no transformers config (a GGUF) or a text model."""
    if not (Path(path) / "config.json").is_file():
        return None
    from transformers import AutoConfig

    return vision_of_config(AutoConfig.from_pretrained(path), path)


def vision_of_config(config: Any, path: Path) -> Vision | None:
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
