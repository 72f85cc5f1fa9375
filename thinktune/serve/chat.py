"""A chat session over a loaded model: keeps the conversation, shows thinking apart from the answer.

Images (a vision-language model's `vision`, models/vision.py) go with the turn that asks about them: an `<image>`
placeholder in its text marks where each goes, else they go before the text (as Qwen-VL's own examples put them).
They stay in the conversation, so later turns still see them.

With `retrieval` (a rag index) each question's prompt gets the passages retrieved for it, written as training wrote
them; the history keeps the question alone, and `sources` holds the passages of the latest answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from thinktune.data.images import IMAGE_TOKEN
from thinktune.data.render import render_prompt
from thinktune.errors import DataError
from thinktune.eval.generate import generate_batch
from thinktune.eval.reasoning import split_thinking


@dataclass
class ChatSession:
    model: object
    tokenizer: object
    system_prompt: str | None = None
    max_new_tokens: int = 256
    enable_thinking: bool | None = None  # the template's thinking switch (Qwen3); None = its default
    do_sample: bool = False  # greedy unless asked to sample
    temperature: float = 0.7  # with do_sample
    history: list[dict] = field(default_factory=list)
    vision: Any = None  # a vision-language model's Vision; None: the model takes no images
    images: list[Any] = field(default_factory=list)  # the conversation's images (paths or PIL images), in order
    retrieval: Any = None  # rag.retrieval.Retrieval, or None
    sources: list[Any] = field(default_factory=list)  # rag.index.Hit: the passages the latest answer was given
    speculation: Any = None  # speculative decoding (models/speculative.py); None: plain decoding

    def ask(self, text: str, images: list[Any] | None = None) -> tuple[str | None, str]:
        """(thinking, answer) for one user turn with its `images`; the answer (not the thinking) stays in the history,
        as R1 does."""
        images = list(images or [])
        if images:
            if self.vision is None:
                raise DataError("this model is text-only: it takes no images")
            placed = text.count(IMAGE_TOKEN)
            if placed and placed != len(images):
                raise DataError(f"{placed} {IMAGE_TOKEN} placeholder(s) in the text for {len(images)} image(s)")
            text = text if placed else IMAGE_TOKEN * len(images) + text
        self.history.append({"role": "user", "content": text, "reasoning": None})
        self.images += images
        messages = self.vision.messages(self.history) if self.images else self.history
        if self.retrieval is not None:
            messages, self.sources = self.retrieval.augment(messages)
        prompt = render_prompt(self.tokenizer, messages, self.system_prompt, enable_thinking=self.enable_thinking)
        [(out, _)] = generate_batch(
            self.model,
            self.tokenizer,
            [prompt],
            self.max_new_tokens,
            self.do_sample,
            self.temperature,
            images=[self.images],
            vision=self.vision,
            speculation=self.speculation,
        )
        thinking, answer, _ = split_thinking(out)
        self.history.append({"role": "assistant", "content": answer, "reasoning": None})
        return thinking, answer
