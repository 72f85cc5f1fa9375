"""Run a model over evaluation tasks: batched generation, answer checking, format compliance, held-out loss."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from thinktune.config import EvalConfig
from thinktune.data.collate import pad_batch
from thinktune.data.formats import RecordError
from thinktune.data.render import render_prompt, tokenize_conversation
from thinktune.eval.generate import batched, generate_batch
from thinktune.eval.reasoning import answers_match, parse_output


@dataclass
class EvalResult:
    accuracy: float
    format_compliance: float
    mean_think_tokens: float
    mean_output_tokens: float
    loss: float | None
    perplexity: float | None
    n: int
    seconds: float
    samples: list[dict[str, Any]] = field(default_factory=list)

    def headline(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("samples")
        return d


@torch.inference_mode()
def heldout_loss(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tasks: list[dict], system_prompt: str | None, bs: int
) -> float | None:
    """Mean cross-entropy on the reference answers' tokens (teacher forcing)."""
    samples = []
    for t in tasks:
        try:
            samples.append(tokenize_conversation(tokenizer, t["messages"], system_prompt))
        except RecordError:
            continue
    total, count = 0.0, 0
    for chunk in batched(samples, bs):
        batch = {k: v.to(model.device) for k, v in pad_batch(chunk, tokenizer.pad_token_id).items()}
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += float(model(**batch).loss) * n
        count += n
    return total / count if count else None


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[dict],
    cfg: EvalConfig,
    system_prompt: str | None = None,
    progress=None,
) -> EvalResult:
    start = time.perf_counter()
    model.eval()
    prompts = [render_prompt(tokenizer, t["prompt"], system_prompt) for t in tasks]
    # Similar lengths together: less padding per batch. Results are put back in task order.
    order = sorted(range(len(tasks)), key=lambda i: len(prompts[i]))
    outputs: dict[int, tuple[str, int]] = {}
    for chunk in batched(order, cfg.batch_size):
        gen = generate_batch(
            model, tokenizer, [prompts[i] for i in chunk], cfg.max_new_tokens, cfg.do_sample, cfg.temperature
        )
        outputs.update(zip(chunk, gen, strict=True))
        if progress is not None:
            progress(len(chunk))
    samples = []
    for i, t in enumerate(tasks):
        text, n_tokens = outputs[i]
        parsed = parse_output(text)
        think_tokens = len(tokenizer(parsed.thinking, add_special_tokens=False)["input_ids"]) if parsed.thinking else 0
        samples.append(
            {
                "prompt": t["prompt"][-1]["content"],
                "output": text,
                "predicted": parsed.answer,
                "answer": t["answer"],
                "correct": answers_match(parsed.answer, t["answer"]),
                "format_ok": parsed.format_ok,
                "think_tokens": think_tokens,
                "output_tokens": n_tokens,
            }
        )
    loss = heldout_loss(model, tokenizer, tasks, system_prompt, cfg.batch_size)
    n = max(1, len(samples))
    return EvalResult(
        accuracy=sum(s["correct"] for s in samples) / n,
        format_compliance=sum(s["format_ok"] for s in samples) / n,
        mean_think_tokens=sum(s["think_tokens"] for s in samples) / n,
        mean_output_tokens=sum(s["output_tokens"] for s in samples) / n,
        loss=loss,
        perplexity=math.exp(loss) if loss is not None and loss < 50 else None,
        n=len(samples),
        seconds=time.perf_counter() - start,
        samples=samples,
    )
