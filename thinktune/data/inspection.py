"""Show a sample exactly as training sees it: the rendered text, cut where the loss mask changes.

The pieces come from slicing the rendered text at token offsets, not from decoding token runs, so every character
appears once and multi-byte characters never split. Trained pieces are shown in colour on a terminal, or wrapped
in [[ ]] when the output is piped. A record's images (with a vision-language model's `vision`) show as the model's
image text, its image token written once with the number of tokens it stands for (`<|image_pad|>×64`): one per
merged patch of that image, never trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from transformers import PreTrainedTokenizerBase

from thinktune.data.record_error import RecordError
from thinktune.data.render import (
    IGNORE,
    RenderOptions,
    encode_rendered,
    encode_with_offsets,
    mask_labels,
    render_record,
)

OPEN, CLOSE = "[[", "]]"


@dataclass
class MaskedView:
    pieces: list[tuple[str, bool]]  # (text, trained) in order; adjacent pieces alternate
    tokens: int
    trained_tokens: int
    notes: list[str] = field(default_factory=list)  # where the sample differs from the template's own render
    parity: str = "ok"  # "ok", or the mismatch between the training tokens and the inference prompt
    images: list[tuple[str, int]] = field(default_factory=list)  # (image, image tokens) in the order they appear

    def plain(self) -> str:
        return "".join(f"{OPEN}{t}{CLOSE}" if trained else t for t, trained in self.pieces)

    def rich(self) -> Text:
        out = Text()
        for t, trained in self.pieces:
            out.append(t, style="bold green" if trained else "dim")
        return out

    def trained_text(self) -> str:
        return "".join(t for t, trained in self.pieces if trained)


def masked_views(
    tokenizer: PreTrainedTokenizerBase, rec: dict[str, Any], opts: RenderOptions | None = None, vision: Any = None
) -> list[MaskedView]:
    """Every sample a record trains, as training sees it. Raises RecordError when the record cannot be rendered
    (also: images without a vision-language model's `vision`); a sample that fails the parity check or the length
    limit is still shown, with the reason in `parity`."""
    opts = opts or RenderOptions()
    images = rec.get("images") or []
    if images:
        from thinktune.data.render import tokenize_record

        tokenize_record(tokenizer, rec, RenderOptions(opts.system_prompt, opts.thinking, opts.multi_turn), vision)
        rec = {**rec, "messages": vision.messages(rec["messages"])}
    counts = vision.tokens(images) if images else []
    views = []
    for rendered in render_record(tokenizer, rec, opts):
        try:
            encode_rendered(tokenizer, [rendered], opts.max_length)
            parity = "ok"
        except RecordError as e:
            parity = str(e)
        [(ids, offsets)] = encode_with_offsets(tokenizer, [rendered.text])
        view = _view(rendered.text, ids, offsets, rendered.spans)
        view.notes, view.parity = rendered.notes, parity
        if images:
            with_image_tokens(view, tokenizer.convert_ids_to_tokens(vision.image_token_id), images, counts)
        views.append(view)
    return views


def with_image_tokens(view: MaskedView, token: str, images: list[str], counts: list[int]) -> None:
    """Each image token of the view's text written as `token×n` (n: the tokens its image stands for), and the
    view's token count grown by them."""
    k, pieces = 0, []
    for text, trained in view.pieces:
        parts = text.split(token)
        for i, part in enumerate(parts[:-1]):
            n = counts[k] if k < len(counts) else 1
            view.images.append((images[k] if k < len(images) else "?", n))
            view.tokens += n - 1
            parts[i] = f"{part}{token}×{n}"
            k += 1
        pieces.append(("".join(parts), trained))
    view.pieces = pieces


def masked_view(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], system_prompt: str | None = None
) -> MaskedView:
    """The sample that trains a conversation's final turn; raises RecordError like tokenisation does."""
    view = masked_views(tokenizer, {"messages": messages, "meta": {}}, RenderOptions(system_prompt))[-1]
    if view.trained_tokens == 0:
        raise RecordError("no assistant tokens left to train on")
    return view


def _view(text: str, ids: list[int], offsets: list, spans: list[tuple[int, int]]) -> MaskedView:
    labels = mask_labels(ids, offsets, spans)
    # Each character takes the flag of the token that starts at or before it; text before the first token is masked.
    flags = [False] * len(text)
    for (start, end), label in zip(offsets, labels, strict=True):
        for c in range(start, min(end, len(text))):
            flags[c] = label != IGNORE
    pieces: list[tuple[str, bool]] = []
    start = 0
    for c in range(1, len(text) + 1):
        if c == len(text) or flags[c] != flags[start]:
            pieces.append((text[start:c], flags[start]))
            start = c
    return MaskedView(pieces, len(ids), sum(1 for x in labels if x != IGNORE))
