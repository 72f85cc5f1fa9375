"""Packing: best-fit decreasing bins, position ids restart per sample, and packed losses equal unpacked ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from thinktune.data.collate import block_causal_mask, collate_packed, pad_batch
from thinktune.data.packing import pack, plan_packing
from thinktune.data.render import IGNORE, TokenizedSample


@pytest.mark.parametrize(
    ("lengths", "max_length", "bins"),
    [
        ([5, 5, 5], 10, 2),
        ([9, 1, 8, 2, 7, 3], 10, 3),  # pairs to exactly 10
        ([10, 10], 10, 2),
        ([1] * 10, 10, 1),
        ([6, 5, 5, 4], 10, 2),  # best fit: 6+4 and 5+5
        ([], 10, 0),
    ],
)
def test_plan_packing_best_fit_decreasing(lengths, max_length, bins):
    plan = plan_packing(lengths, max_length)
    assert len(plan) == bins
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))  # every sample exactly once
    assert all(sum(lengths[i] for i in b) <= max_length for b in plan)


def test_plan_packing_refuses_too_long():
    with pytest.raises(ValueError, match="sample 1 has 11 tokens > max_length=10"):
        plan_packing([3, 11], 10)


def _sample(ids: list[int], trained_from: int) -> TokenizedSample:
    return TokenizedSample(ids, [IGNORE] * trained_from + ids[trained_from:])


def test_pack_resets_positions_and_masks_sample_starts():
    samples = [_sample([1, 2, 3, 4], 0), _sample([5, 6], 1), _sample([7, 8, 9], 2)]
    packed = pack(samples, 6)
    assert sum(len(p.seq_lens) for p in packed) == 3
    for p in packed:
        assert sum(p.seq_lens) == len(p.input_ids) == len(p.labels) == len(p.position_ids) <= 6
        start = 0
        for n in p.seq_lens:
            assert p.position_ids[start : start + n] == list(range(n))
            assert p.labels[start] == IGNORE  # nothing predicts the first token of the next sample
            start += n
    by_first = {p.input_ids[0]: p for p in packed}
    assert by_first[1].input_ids == [1, 2, 3, 4, 5, 6] and by_first[1].labels == [IGNORE, 2, 3, 4, IGNORE, 6]
    assert by_first[7].input_ids == [7, 8, 9] and by_first[7].labels == [IGNORE, IGNORE, 9]


def test_block_causal_mask_shape_and_blocks():
    mask = block_causal_mask([[2, 3]], 6)
    assert mask.shape == (1, 1, 6, 6)
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # padding is its own block: no fully masked row
    ]


def test_collate_packed_pads():
    seqs = pack([_sample([1, 2, 3], 1), _sample([4, 5], 0)], 4)
    batch = collate_packed(seqs, pad_id=0, block_mask=True, pad_to=5)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (2, 5)
    assert batch["attention_mask"].shape == (2, 1, 5, 5)
    assert (batch["labels"][batch["input_ids"] == 0] == IGNORE).all()


def per_sample_losses_unpacked(model, samples) -> list[float]:
    out = []
    for s in samples:
        batch = pad_batch([s], 0)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[0]
        labels = batch["labels"][0]
        out.append(F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE, reduction="sum").item())
    return out


def per_sample_losses_packed(model, samples, max_length, block_mask) -> dict[int, float]:
    lengths = [len(s.input_ids) for s in samples]
    plan = plan_packing(lengths, max_length)
    seqs = pack(samples, max_length)
    batch = collate_packed(seqs, pad_id=0, block_mask=block_mask)
    assert batch["use_cache"] is False  # without it transformers builds a cache and ignores the resets
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    out = {}
    for b, (bin_, seq) in enumerate(zip(plan, seqs, strict=True)):
        start = 0
        for i, n in zip(bin_, seq.seq_lens, strict=True):
            lg = logits[b, start : start + n]
            labels = torch.tensor(samples[i].labels)
            out[i] = F.cross_entropy(lg[:-1], labels[1:], ignore_index=IGNORE, reduction="sum").item()
            start += n
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("block_mask", [False, True], ids=["position_ids", "block_mask"])
def test_packed_losses_equal_unpacked(tiny_model_dirs, attn, block_mask):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"], attn_implementation=attn).eval()
    g = torch.Generator().manual_seed(0)
    samples = []
    for n in (7, 12, 5, 20, 3, 9, 16):
        ids = torch.randint(3, model.config.vocab_size, (n,), generator=g).tolist()
        samples.append(_sample(ids, n // 3))
    with torch.no_grad():
        unpacked = per_sample_losses_unpacked(model, samples)
        packed = per_sample_losses_packed(model, samples, 24, block_mask)
    assert sorted(packed) == list(range(len(samples)))
    for i, loss in enumerate(unpacked):
        assert packed[i] == pytest.approx(loss, abs=1e-4), i


def test_packed_training_loss_equals_mean_of_unpacked(tiny_model_dirs):
    """model(**batch).loss on a packed batch = token-mean CE over all samples (no cross-sample targets)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"], attn_implementation="sdpa").eval()
    g = torch.Generator().manual_seed(1)
    samples = [_sample(torch.randint(3, 200, (n,), generator=g).tolist(), 2) for n in (6, 10, 4)]
    with torch.no_grad():
        sums = per_sample_losses_unpacked(model, samples)
        tokens = sum(sum(1 for x in s.labels[1:] if x != IGNORE) for s in samples)
        batch = collate_packed(pack(samples, 20), pad_id=0)
        loss = model(**batch).loss.item()
    assert loss == pytest.approx(sum(sums) / tokens, abs=1e-4)
