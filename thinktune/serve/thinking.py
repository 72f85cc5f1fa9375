"""Split a streamed R1-style answer into reasoning and content as the text arrives.

R1 models write `<think>\\n…\\n</think>\\n\\nanswer`; templates of R1 distills pre-fill `<think>` in the prompt, so the
output then starts inside the thinking. Tags may arrive split across deltas (`</thi` + `nk>`), so a suffix that could
still become a tag is held back until the next piece decides it. Whitespace at the edges of each part is dropped, as
`eval.reasoning.split_thinking` strips it, so the streamed parts concatenate to the non-streamed ones.
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN, CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class SplitDelta:
    reasoning: str = ""
    content: str = ""

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content)

    def __add__(self, other: SplitDelta) -> SplitDelta:
        return SplitDelta(self.reasoning + other.reasoning, self.content + other.content)


def prompt_opens_thinking(prompt: str) -> bool:
    """The chat template pre-filled `<think>` (R1 distills): the output starts inside the thinking."""
    return prompt.rstrip().endswith(OPEN)


def partial_tag(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (0 if none)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ThinkingSplitter:
    """feed(text) → SplitDelta for each generated piece; finish() → what was held back at the end."""

    def __init__(self, starts_in_thinking: bool = False):
        self.section = "reasoning" if starts_in_thinking else "start"
        self.buffer = ""  # text not yet assigned to a section
        self.pending_ws = ""  # trailing whitespace of the current section, emitted only if more text follows
        self.started = False  # the current section has emitted text (its leading whitespace is gone)

    def feed(self, text: str) -> SplitDelta:
        self.buffer += text
        out = SplitDelta()
        while True:
            if self.section == "start":
                head = self.buffer.lstrip()
                if not head or (len(head) < len(OPEN) and OPEN.startswith(head)):
                    return out  # still could be `<think>`
                if head.startswith(OPEN):
                    self._enter("reasoning", head[len(OPEN) :])
                else:
                    self._enter("content", head)
            elif self.section == "reasoning":
                if not self.started:  # a pre-filled `<think>` the model repeats anyway
                    head = self.buffer.lstrip()
                    if head and len(head) < len(OPEN) and OPEN.startswith(head):
                        return out
                    if head.startswith(OPEN):
                        self.buffer = head[len(OPEN) :]
                end = self.buffer.find(CLOSE)
                if end >= 0:
                    out += self._emit(self.buffer[:end])
                    self._enter("content", self.buffer[end + len(CLOSE) :])
                    continue
                keep = partial_tag(self.buffer, CLOSE)
                out += self._emit(self.buffer[: len(self.buffer) - keep])
                self.buffer = self.buffer[len(self.buffer) - keep :]
                return out
            else:
                out += self._emit(self.buffer)
                self.buffer = ""
                return out

    def finish(self) -> SplitDelta:
        """End of output: a held-back fragment that never became a tag is plain text."""
        rest, self.buffer = self.buffer, ""
        if self.section == "start":
            self.section, self.started = "content", False
            rest = rest.strip()
        return self._emit(rest)

    def _enter(self, section: str, rest: str) -> None:
        self.section, self.buffer, self.pending_ws, self.started = section, rest, "", False

    def _emit(self, text: str) -> SplitDelta:
        if not self.started:
            text = text.lstrip()
        if not text:
            return SplitDelta()
        text = self.pending_ws + text
        body = text.rstrip()
        self.pending_ws = text[len(body) :]
        if not body:
            return SplitDelta()
        self.started = True
        return SplitDelta(reasoning=body) if self.section == "reasoning" else SplitDelta(content=body)


def split_text(text: str, starts_in_thinking: bool = False) -> tuple[str | None, str]:
    """(reasoning or None, content) of a whole output, by the same rules as the stream."""
    splitter = ThinkingSplitter(starts_in_thinking)
    parts = splitter.feed(text) + splitter.finish()
    return (parts.reasoning or None), parts.content
