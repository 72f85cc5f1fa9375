"""Show a sample exactly as training sees it: the rendered text, cut where the loss mask changes.

The pieces come from slicing the rendered text at token offsets, not from decoding token runs, so every character
appears once and multi-byte characters never split. Trained pieces are shown in colour on a terminal, or wrapped
in [[ ]] when the output is piped.
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
    tokenizer: PreTrainedTokenizerBase, rec: dict[str, Any], opts: RenderOptions | None = None
) -> list[MaskedView]:
    """Every sample a record trains, as training sees it. Raises RecordError when the record cannot be rendered;
    a sample that fails the parity check or the length limit is still shown, with the reason in `parity`."""
    opts = opts or RenderOptions()
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
        views.append(view)
    return views


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
