"""Gradients of the first optimizer steps of SFT, DPO and GRPO objectives under a given split of the global batch.

    python tests/train/normalisation.py MODEL_DIR OBJECTIVE BATCH_SIZE ACCUM OUT.pt        # one process
    python -m torch.distributed.run --nproc_per_node 2 tests/train/normalisation.py ...   # two processes (gloo)

Six training items, two optimizer steps (4 items, then a short last group of 2), learning rate 0 so both steps see
the same weights; the real TrainLoop, the recipes' objectives and batch builders on fixed synthetic token ids (the
rollouts of GRPO included: the split, not sampling, is what is under test). Writes, from the main process, the
gradient of every parameter at each optimizer step.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from accelerate import Accelerator
from rich.console import Console
from transformers import AutoModelForCausalLM

from thinktune.config import DPOConfig, GRPOConfig, TrainConfig
from thinktune.data.render import IGNORE, TokenizedSample
from thinktune.train.dpo import PreferenceData, pair_batch
from thinktune.train.engine.loop import TrainLoop
from thinktune.train.engine.speed import build_make_batch
from thinktune.train.objectives.grpo import grpo_objective
from thinktune.train.objectives.preference import preference_objective
from thinktune.train.objectives.sft import sft_objective
from thinktune.train.policy import disable_dropout
from thinktune.train.rollout import merge_rollouts, positions

OBJECTIVES = ("sft", "dpo", "kto", "grpo_sequence_mean", "grpo_token", "grpo_dr_grpo")
N_ITEMS, PAD, G = 6, 0, 2


def _sample(gen: torch.Generator, vocab: int, prompt: int, answer: int) -> TokenizedSample:
    ids = torch.randint(3, vocab, (prompt + answer,), generator=gen).tolist()
    return TokenizedSample(ids, [IGNORE] * prompt + ids[prompt:])


def _sizes(gen: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high, (1,), generator=gen))


def sft_items(vocab: int, gen: torch.Generator):
    samples = [_sample(gen, vocab, _sizes(gen, 2, 9), _sizes(gen, 1, 14)) for _ in range(N_ITEMS)]
    return build_make_batch(samples, TrainConfig(packing=False), PAD)


def preference_items(vocab: int, gen: torch.Generator, kto: bool):
    def answer():
        return _sample(gen, vocab, _sizes(gen, 2, 7), _sizes(gen, 1, 12))

    data = PreferenceData(
        [{}] * N_ITEMS, [answer() for _ in range(N_ITEMS)], [answer() for _ in range(N_ITEMS)], [], []
    )
    if kto:
        data.mismatched = [answer() for _ in range(N_ITEMS)]
    ref = {k: -torch.rand(N_ITEMS, generator=gen) * 20 for k in ("chosen", "rejected", "mismatched")}
    return lambda idx: pair_batch(data, idx, PAD, ref)


def rollout(vocab: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One prompt's group of G completions, laid out as sample_completions lays them out."""
    p, c = _sizes(gen, 2, 7), _sizes(gen, 3, 10)
    prompt = torch.randint(3, vocab, (p,), generator=gen).repeat(G, 1)
    lengths = torch.randint(1, c + 1, (G,), generator=gen)
    cmask = (torch.arange(c)[None, :] < lengths[:, None]).long()
    completion = torch.randint(3, vocab, (G, c), generator=gen).masked_fill(cmask == 0, PAD)
    attention = torch.cat([torch.ones_like(prompt), cmask], dim=1)
    rewards = torch.rand(G, 1, generator=gen)
    return {
        "input_ids": torch.cat([prompt, completion], dim=1),
        "attention_mask": attention,
        "position_ids": positions(attention),
        "labels": torch.cat([torch.full_like(prompt, IGNORE), completion.masked_fill(cmask == 0, IGNORE)], dim=1),
        "completion_mask": cmask,
        "advantages": torch.randn(G, generator=gen),
        "rewards": rewards,
        "reward_total": rewards[:, 0],
        "sampled_rewards": rewards,
        "sampled_total": rewards[:, 0],
        "n_tokens": lengths.float(),
        "truncated": torch.zeros(G),
    }


def grpo_items(vocab: int, gen: torch.Generator):
    groups = [rollout(vocab, gen) for _ in range(N_ITEMS)]

    def make_batch(idx):
        batch = merge_rollouts([groups[i] for i in idx], PAD)
        batch["rollout_seconds"] = torch.tensor(0.0)
        return batch

    return make_batch


def gradients(model_dir: str, objective: str, batch_size: int, accum: int) -> list[dict[str, torch.Tensor]]:
    acc = Accelerator(cpu=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    disable_dropout(model)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1234)  # the same items on every process and in every split
    cfg = TrainConfig(
        batch_size=batch_size,
        gradient_accumulation_steps=accum,
        max_steps=2,
        max_grad_norm=None,
        report_to=[],
        seed=7,
    )
    if objective == "sft":
        make_batch, obj = sft_items(vocab, gen), sft_objective(model, cfg)
    elif objective in ("dpo", "kto"):
        make_batch = preference_items(vocab, gen, objective == "kto")
        obj = preference_objective(DPOConfig(loss=objective), None)
    else:
        aggregation = objective.removeprefix("grpo_")
        g = GRPOConfig(num_generations=G, beta=0.0, loss_aggregation=aggregation, max_completion_length=12)
        make_batch, obj = grpo_items(vocab, gen), grpo_objective(g, ["r"])
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.SGD([p for _, p in params], lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model, optimizer = acc.prepare(model, optimizer)
    seen: list[dict[str, torch.Tensor]] = []

    def capture(step: int) -> None:  # after optimizer.step(), before zero_grad: the step's gradients
        seen.append({n: p.grad.detach().clone() for n, p in params if p.grad is not None})

    with tempfile.TemporaryDirectory() as tmp:
        TrainLoop(
            cfg=cfg,
            accelerator=acc,
            model=model,
            params=params,
            optimizer=optimizer,
            scheduler=scheduler,
            n_samples=N_ITEMS,
            make_batch=make_batch,
            loss_fn=obj.loss,
            units=obj.units,
            total_steps=2,
            run_dir=Path(tmp),
            console=Console(quiet=True),
            after_step=capture,
        ).run()
    return seen


if __name__ == "__main__":
    model_dir, objective, bs, accum, out = sys.argv[1:6]
    grads = gradients(model_dir, objective, int(bs), int(accum))
    state = Accelerator(cpu=True)
    if state.is_main_process:
        torch.save(grads, out)
