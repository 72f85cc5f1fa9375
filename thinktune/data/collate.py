"""Batches for training: padded samples, or packed sequences with per-sample position ids.

`pad_batch` right-pads samples (labels -100 and attention mask 0 on padding).
`collate_packed` stacks PackedSequences. Without `block_mask` it returns no attention mask: transformers then reads
the position-id resets and keeps attention inside each sample (flash-attention varlen, and the SDPA/eager masks
built by masking_utils when `use_cache=False`). With `block_mask=True` it adds the explicit 4-D block-diagonal
causal mask (0 where attention is allowed, the dtype's minimum elsewhere), which any attention implementation obeys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from thinktune.data.packing import PackedSequence
from thinktune.data.render import IGNORE, TokenizedSample


def pad_batch(samples: list[TokenizedSample], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s.input_ids)
        ids[i, :n] = torch.tensor(s.input_ids)
        labels[i, :n] = torch.tensor(s.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def block_causal_mask(
    seq_lens: Sequence[Sequence[int]], width: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """[batch, 1, width, width] additive mask: token q sees token k iff both are in the same sample and k <= q.

    Padding after the last sample forms its own block, so no row is fully masked (that would give NaN in softmax)."""
    seg = torch.zeros((len(seq_lens), width), dtype=torch.long)
    for b, lens in enumerate(seq_lens):
        start = 0
        for j, n in enumerate(lens):
            seg[b, start : start + n] = j
            start += n
        seg[b, start:] = len(lens)
    same = seg[:, :, None] == seg[:, None, :]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    allowed = same & causal
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def collate_packed(
    seqs: list[PackedSequence],
    pad_id: int,
    block_mask: bool = False,
    pad_to: int | None = None,
    mask_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """input_ids, labels, position_ids (and `attention_mask` [B,1,L,L] when block_mask) for packed sequences.

    The batch carries `use_cache=False`, so `model(**batch)` keeps samples apart."""
    width = max(pad_to or 0, max(len(s.input_ids) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s.input_ids)
        ids[i, :n] = torch.tensor(s.input_ids)
        labels[i, :n] = torch.tensor(s.labels)
        positions[i, :n] = torch.tensor(s.position_ids)
        positions[i, n:] = torch.arange(width - n)  # padding: one more "sample", never trained
    # use_cache=False travels with the batch: transformers ignores position-id resets when it builds a KV cache,
    # and samples would silently attend to each other.
    batch: dict[str, Any] = {"input_ids": ids, "labels": labels, "position_ids": positions, "use_cache": False}
    if block_mask:
        batch["attention_mask"] = block_causal_mask([s.seq_lens for s in seqs], width, mask_dtype)
    return batch
