"""Generated tokens → text, one token at a time, and stop strings found in that text.

Decoding one token alone loses what depends on its neighbours (SentencePiece's leading space, a UTF-8 character split
over two byte tokens), so each step decodes a short window that starts before the new token and keeps only the part
that grew — the offsets scheme of Hugging Face text-generation-inference.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

INCOMPLETE = "\ufffd"  # what a decoder yields for half of a multi-byte character


class IncrementalDetokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # window start: context for the tokens being read
        self.read_offset = 0  # tokens before this one are already text

    def add(self, token_id: int) -> str:
        """Text the new token completes ('' while a character is still incomplete)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix) and not text.endswith(INCOMPLETE):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix) :]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""


def find_stop(text: str, stops: tuple[str, ...], start: int = 0) -> int | None:
    """Index of the earliest stop string in `text[start:]`, or None."""
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def stop_holdback(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` that may be the start of a stop string: not yet safe to send."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest
