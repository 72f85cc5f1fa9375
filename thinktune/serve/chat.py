"""A chat session over a loaded model: keeps the conversation, shows thinking apart from the answer."""

from __future__ import annotations

from dataclasses import dataclass, field

from thinktune.data.render import render_prompt
from thinktune.eval.generate import generate_batch
from thinktune.eval.reasoning import split_thinking


@dataclass
class ChatSession:
    model: object
    tokenizer: object
    system_prompt: str | None = None
    max_new_tokens: int = 256
    enable_thinking: bool | None = None  # the template's thinking switch (Qwen3); None = its default
    history: list[dict] = field(default_factory=list)

    def ask(self, text: str) -> tuple[str | None, str]:
        """(thinking, answer) for one user turn; the answer (not the thinking) stays in the history, as R1 does."""
        self.history.append({"role": "user", "content": text, "reasoning": None})
        prompt = render_prompt(self.tokenizer, self.history, self.system_prompt, enable_thinking=self.enable_thinking)
        [(out, _)] = generate_batch(self.model, self.tokenizer, [prompt], self.max_new_tokens)
        thinking, answer, _ = split_thinking(out)
        self.history.append({"role": "assistant", "content": answer, "reasoning": None})
        return thinking, answer
