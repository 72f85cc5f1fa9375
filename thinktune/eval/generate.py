"""Batched generation for evaluation and chat: left-padded prompts, greedy by default, stops at end of turn."""

from __future__ import annotations

from collections.abc import Iterator

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


@torch.inference_mode()
def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 160,
    do_sample: bool = False,
    temperature: float = 0.7,
) -> list[tuple[str, int]]:
    """(completion text, number of generated tokens) for each prompt."""
    enc = left_padded(tokenizer(prompts, add_special_tokens=False)["input_ids"], tokenizer.pad_token_id)
    enc = {k: v.to(model.device) for k, v in enc.items()}
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
    )
    results = []
    for row in out[:, enc["input_ids"].shape[1] :]:
        ids = row.tolist()
        n = next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))
        results.append((tokenizer.decode(ids[:n], skip_special_tokens=True), n))
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
