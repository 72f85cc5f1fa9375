"""Batched generation for evaluation and chat: left-padded prompts, greedy by default, stops at end of turn.

transformers' `model.generate` does the decoding: a hand-written loop (in-place KV cache, finished rows leaving the
batch) measured no faster on a 2-core CPU, where decoding is bound by the matmuls themselves (docs/performance.md).
What is ours: the evaluation after training runs with a LoRA-family adapter merged (`merged_for_inference`), and
every call can count its generated tokens and seconds (`GenerationStats`, reported as tokens/s in eval summaries).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if tok in tokenizer.get_vocab() else None
        if tid is not None:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


@dataclass
class GenerationStats:
    """Accumulated over calls: generated tokens and the seconds spent generating them."""

    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


MERGEABLE = {"LORA", "ADALORA", "IA3", "LOHA", "LOKR"}  # PEFT types whose adapter merges into the weights


@contextmanager
def merged_for_inference(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """A PEFT model with its adapter merged into the base weights while generating (one matmul per layer instead
    of the base's plus the adapter's two), unmerged after. Models without a mergeable adapter (no PEFT, prompt
    learning, a 4-bit base) are used as they are."""
    merge = getattr(model, "merge_adapter", None)
    quantized = getattr(getattr(model, "config", None), "quantization_config", None) is not None
    if merge is None or quantized or getattr(model, "peft_type", None) not in MERGEABLE:
        yield model
        return
    merge()
    try:
        yield model
    finally:
        model.unmerge_adapter()


@torch.inference_mode()
def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 160,
    do_sample: bool = False,
    temperature: float = 0.7,
    stats: GenerationStats | None = None,
    images: list[list] | None = None,
    vision=None,
    speculation=None,
) -> list[tuple[str, int]]:
    """(completion text, number of generated tokens) for each prompt; `stats` accumulates tokens and seconds.
    `images`: each prompt's images (paths or PIL images), given to a vision-language model through its `vision`
    (models/vision.py) — the prompts then hold the model's image text where each image goes. `speculation`
    (models/speculative.py): speculative decoding, one prompt per call."""
    if speculation is not None and len(prompts) != 1:
        raise ValueError(f"speculative decoding generates one prompt per call, not {len(prompts)}")
    start = time.perf_counter()
    if vision is not None and images and any(images):
        rows = [vision.prompt_ids(tokenizer, p, imgs) for p, imgs in zip(prompts, images, strict=True)]
        pixels = vision.pixels([im for imgs in images for im in imgs])
    else:
        rows, pixels = tokenizer(prompts, add_special_tokens=False)["input_ids"], {}
    enc = left_padded(rows, tokenizer.pad_token_id)
    enc = {k: v.to(model.device) for k, v in {**enc, **pixels}.items()}
    stops = stop_token_ids(tokenizer, model)
    kwargs = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id,
        top_p=None,
        top_k=None,
        **kwargs,
        **(speculation.generate_kwargs() if speculation is not None else {}),
    )
    results = []
    for row in out[:, enc["input_ids"].shape[1] :]:
        ids = row.tolist()
        n = next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))
        results.append((tokenizer.decode(ids[:n], skip_special_tokens=True), n))
    if stats is not None:
        stats.tokens += sum(n for _, n in results)
        stats.seconds += time.perf_counter() - start
    return results


def left_padded(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask, padded on the left. Padded by hand: the tokenizer's own padding would change
    its padding side and leave padding switched on in its Rust backend for whoever calls that directly next."""
    width = max(len(r) for r in rows)
    ids = [[pad_id] * (width - len(r)) + r for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


def batched(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
