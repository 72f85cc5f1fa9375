"""Show a sample exactly as training sees it: the rendered text, cut where the loss mask changes.

The pieces come from slicing the rendered text at token offsets, not from decoding token runs, so every character
appears once and multi-byte characters never split. Trained pieces are shown in colour on a terminal, or wrapped
in [[ ]] when the output is piped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.text import Text
from transformers import PreTrainedTokenizerBase

from thinktune.data.render import IGNORE, encode_with_offsets, mask_labels, render_conversation

OPEN, CLOSE = "[[", "]]"


@dataclass
class MaskedView:
    pieces: list[tuple[str, bool]]  # (text, trained) in order; adjacent pieces alternate
    tokens: int
    trained_tokens: int

    def plain(self) -> str:
        return "".join(f"{OPEN}{t}{CLOSE}" if trained else t for t, trained in self.pieces)

    def rich(self) -> Text:
        out = Text()
        for t, trained in self.pieces:
            out.append(t, style="bold green" if trained else "dim")
        return out

    def trained_text(self) -> str:
        return "".join(t for t, trained in self.pieces if trained)


def masked_view(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], system_prompt: str | None = None
) -> MaskedView:
    """Raises RecordError like tokenisation does (the record could not be trained on)."""
    rendered = render_conversation(tokenizer, messages, system_prompt)
    [(ids, offsets)] = encode_with_offsets(tokenizer, [rendered.text])
    labels = mask_labels(ids, offsets, rendered.spans)
    text = rendered.text
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
