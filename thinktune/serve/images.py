"""Images a chat request sends: decoded from `data:` URLs in its user messages' `image_url` parts.

The server fetches nothing (it may run where nothing outside can be reached, and fetching for a client is a way into
the network it runs in): an http(s) URL, a file path or a file:// URL is refused with 400, as is an image that does
not decode or whose size is out of bounds (data/images.py: MIN_SIDE, MAX_PIXELS). Every error names the message.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from thinktune.data.images import MAX_PIXELS, MIN_SIDE
from thinktune.serve.protocol import ApiError, Message

DATA_URL_EXAMPLE = "data:image/png;base64,..."


def request_images(messages: list[Message]) -> list[Any]:
    """The request's images as PIL images, in the order their placeholders appear; ApiError (400) for the first one
    that is not a decodable data: URL, or that is in a message other than a user message."""
    images = []
    for i, m in enumerate(messages):
        urls = m.image_urls()
        if urls and m.role != "user":
            raise ApiError(400, f"messages[{i}]: images go in user messages, not {m.role} messages", param="messages")
        images += [decode_data_url(url, f"messages[{i}]: ") for url in urls]
    return images


def decode_data_url(url: str, where: str) -> Any:
    from PIL import Image

    if url.startswith(("http://", "https://")):
        raise ApiError(
            400, f"{where}the server is offline: send the image as a data: URL ({DATA_URL_EXAMPLE})", param="messages"
        )
    header, comma, payload = url.partition(",")
    if not url.startswith("data:") or not comma or not header.endswith(";base64"):
        raise ApiError(
            400, f"{where}an image must be a base64 data: URL ({DATA_URL_EXAMPLE}); got {url[:40]!r}", param="messages"
        )
    try:
        raw = base64.b64decode("".join(payload.split()), validate=True)
        image = Image.open(io.BytesIO(raw))
        w, h = image.size
        if w * h > MAX_PIXELS or min(w, h) < MIN_SIDE:
            raise ApiError(400, f"{where}a {w}×{h} image is out of bounds ({MIN_SIDE} pixels a side to {MAX_PIXELS:,} "
                           "pixels)", param="messages")  # fmt: skip
        return image.convert("RGB")  # decodes every pixel: a truncated image fails here, not in the engine
    except ApiError:
        raise
    except (binascii.Error, ValueError) as e:
        raise ApiError(400, f"{where}the image's base64 does not decode ({e})", param="messages") from None
    except Exception as e:  # noqa: BLE001 — PIL raises many types for bytes that are not an image
        raise ApiError(
            400, f"{where}not a readable image ({type(e).__name__}: {str(e)[:80]})", param="messages"
        ) from None
