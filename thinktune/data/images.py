"""Images in records: where they come from, and the checks a record with images passes before anything uses it.

A canonical record with images holds them as `images` (absolute paths of local files, in order) and marks where each
goes with an `<image>` placeholder in the text of its messages, as LLaMA-Factory's multimodal format does. Two input
shapes arrive there (formats.py):
- OpenAI content parts: `{"type": "image_url", "image_url": {"url": ...}}` or `{"type": "image", "image": ...}` in a
  message's content list — the part becomes a placeholder at its place in the text;
- LLaMA-Factory's `mllm_demo.json`: `<image>` placeholders in the messages plus an `images` list on the record.

`check_images` (reading.py, per record) resolves paths relative to the data file, and rejects a record — one line in
rejects.jsonl, with file and line — whose placeholders and images do not pair up, whose image is missing, is a URL
(images are read from local files), does not decode, or is too small or too large.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thinktune.data.record_error import RecordError

IMAGE_TOKEN = "<image>"
IMAGE_PARTS = ("image_url", "image")
MIN_SIDE = 2  # pixels; vision encoders resize, but a 1-pixel or empty image is a broken file
MAX_PIXELS = 8192 * 8192  # beyond this PIL's decompression-bomb guard applies; no model needs more


def part_image(part: dict[str, Any], where: str) -> str:
    """The image reference of an OpenAI-style image content part."""
    value = part.get(part["type"])
    if isinstance(value, dict):
        value = value.get("url", value.get("path"))
    value = value if value is not None else part.get("url", part.get("path"))
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"{where}an {part['type']} part needs the image's path or URL as a string")
    return value


def collect_images(messages: list[dict[str, Any]], raw: dict[str, Any]) -> dict[str, Any]:
    """`{"images": [...]}` for a record (the images of its content parts, or its `images` list), checked against
    the `<image>` placeholders of its messages; `{}` for a text record. Pops the per-message `images` that
    `formats.message` collected from content parts."""
    from_parts = [ref for m in messages for ref in m.pop("images", [])]
    listed = raw.get("images")
    listed = [] if listed in (None, "", []) else [listed] if isinstance(listed, str) else listed
    if not isinstance(listed, list) or not all(isinstance(x, str) and x.strip() for x in listed):
        raise RecordError("field 'images' must be a list of image file paths")
    if from_parts and listed:
        raise RecordError("images given both as content parts and in the 'images' list: use one of the two")
    images = from_parts or listed
    if not images:
        return {}
    placeholders = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
    if placeholders != len(images):
        raise RecordError(
            f"{placeholders} {IMAGE_TOKEN} placeholder(s) in the messages for {len(images)} image(s): each image needs "
            f"one {IMAGE_TOKEN} where it goes"
        )
    return {"images": images}


def check_images(refs: list[str], base: Path | None) -> list[str]:
    """Absolute paths of the record's images, each opened and decoded; RecordError naming the first bad one."""
    from PIL import Image

    out = []
    for i, ref in enumerate(refs):
        at = f"images[{i}] {ref!r}"
        if ref.startswith(("http://", "https://", "data:")):
            raise RecordError(f"{at}: images are read from local files, not URLs; download it and give its path")
        path = Path(ref).expanduser()
        if not path.is_absolute():
            if base is None:
                raise RecordError(f"{at}: a relative image path needs a data file to be relative to")
            path = base / path
        if not path.is_file():
            raise RecordError(f"{at}: file not found ({path})")
        try:
            with Image.open(path) as im:
                size = im.size
                if size[0] * size[1] > MAX_PIXELS:
                    raise RecordError(f"{at}: {size[0]}×{size[1]} pixels is more than {MAX_PIXELS:,}")
                im.convert("RGB").load()  # decodes every pixel: a truncated file fails here
        except RecordError:
            raise
        except Exception as e:  # noqa: BLE001 — PIL raises many types for a file that is not an image
            raise RecordError(f"{at}: not a readable image ({type(e).__name__}: {str(e)[:80]})") from None
        if min(size) < MIN_SIDE:
            raise RecordError(f"{at}: {size[0]}×{size[1]} pixels is too small to be an image")
        out.append(str(path.resolve()))
    return out
