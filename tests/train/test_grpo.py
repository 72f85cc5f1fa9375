"""GRPO: advantages for known reward tables, the clipped objective against a per-token reimplementation, the k3 KL,
the reference without a second model, sampling masks, rewards, and a 3-step run on the tiny Llama."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from rich.console import Console
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from thinktune.config import GRPOConfig, load_config
from thinktune.data.render import render_prompt
from thinktune.errors import ConfigError
from thinktune.eval.reasoning import answers_match, extract_answer
from thinktune.train.grpo import run_grpo
from thinktune.train.objectives.grpo import (
    aggregate,
    clip_fraction,
    group_advantages,
    grpo_loss,
    k3_kl,
    process_advantages,
)
from thinktune.train.policy import ReferencePolicy, token_logprobs
from thinktune.train.rewards import (
    REWARDS,
    STEP_REWARDS,
    Completion,
    resolve_reward,
    resolve_step_reward,
    reward_name,
    score,
)
from thinktune.train.rollout import (
    RolloutReuse,
    merge_rollouts,
    rollout_batch,
    sample_completions,
    score_steps,
    token_char_starts,
)

t = torch.tensor


# ---- advantages ----


def test_group_advantages_for_a_known_reward_table():
    rewards = t([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0]])
    adv = group_advantages(rewards, scale=True, eps=0.0)
    # row 1: mean 0.5, sample std sqrt(4·0.25/3) = 1/√3 → ±0.5·√3; row 2: no signal; row 3: mean 0.5, std 1
    s = 0.5 * math.sqrt(3)
    assert adv[0].tolist() == pytest.approx([s, -s, -s, s])
    assert group_advantages(rewards)[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert adv[2].tolist() == pytest.approx([-0.5, -0.5, -0.5, 1.5])
    eps = group_advantages(rewards, scale=True, eps=1e-4)
    assert eps[2].tolist() == pytest.approx([-0.5 / 1.0001, -0.5 / 1.0001, -0.5 / 1.0001, 1.5 / 1.0001])
    # Dr. GRPO: no division by the std
    assert group_advantages(rewards, scale=False)[2].tolist() == pytest.approx([-0.5, -0.5, -0.5, 1.5])
    assert group_advantages(rewards, scale=False)[0].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])


# ---- clip fraction, KL, the objective ----


def test_clip_fraction_counts_only_tokens_whose_gradient_the_clip_removes():
    ratio = t([[0.7, 1.0, 1.3], [0.7, 1.3, 1.1]])
    adv = t([1.0, -1.0])
    # Â > 0: only ρ > 1.2 is clipped (1.3); Â < 0: only ρ < 0.8 is clipped (0.7) → 2 of 6
    assert clip_fraction(ratio, adv, torch.ones(2, 3), 0.2, 0.2).item() == pytest.approx(2 / 6)
    mask = t([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # the clipped 1.3 of row 1 is padding
    assert clip_fraction(ratio, adv, mask, 0.2, 0.2).item() == pytest.approx(1 / 5)
    assert clip_fraction(ratio, adv, torch.ones(2, 3), 0.2, 0.35).item() == pytest.approx(1 / 6)  # clip-higher


def test_k3_is_zero_at_the_reference_and_estimates_the_kl():
    lp = torch.log(t([0.2, 0.5, 0.3]))
    assert k3_kl(lp, lp).abs().max().item() == 0.0
    # Unbiased: E_{x~π}[k3] = KL(π ‖ π_ref) for a categorical pair.
    ref = torch.log(t([0.5, 0.25, 0.25]))
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(lp.exp(), 200_000, replacement=True, generator=g)
    estimate = k3_kl(lp[x], ref[x]).mean().item()
    exact = float((lp.exp() * (lp - ref)).sum())
    assert estimate == pytest.approx(exact, rel=0.02)
    assert (k3_kl(lp[x], ref[x]) >= 0).all()


def per_token_reference(logps, old, ref, adv, mask, eps_lo, eps_hi, beta, how, max_len):
    """The GRPO objective written out token by token, as in the papers."""
    n, T = len(logps), len(logps[0])
    per_seq, tokens, total_tokens = [], 0.0, 0
    for i in range(n):
        terms = []
        for j in range(T):
            if not mask[i][j]:
                continue
            rho = math.exp(logps[i][j] - old[i][j])
            a = adv[i]
            surrogate = min(rho * a, min(max(rho, 1 - eps_lo), 1 + eps_hi) * a)
            d = ref[i][j] - logps[i][j]
            terms.append(-(surrogate - beta * (math.exp(d) - d - 1)))
        per_seq.append(sum(terms) / max(1, len(terms)))
        tokens += sum(terms)
        total_tokens += len(terms)
    if how == "sequence_mean":
        return sum(per_seq) / n
    if how == "token":
        return tokens / total_tokens
    return tokens / (n * max_len)


@pytest.mark.parametrize("how", ["sequence_mean", "token", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_matches_a_per_token_reimplementation(how, beta):
    g = torch.Generator().manual_seed(1)
    n, T = 6, 7
    logps = -torch.rand(n, T, generator=g, dtype=torch.double) * 3
    old = logps + (torch.rand(n, T, generator=g, dtype=torch.double) - 0.5) * 0.8  # some ratios leave [0.8, 1.2]
    ref = logps + (torch.rand(n, T, generator=g, dtype=torch.double) - 0.5)
    adv = torch.randn(n, generator=g, dtype=torch.double)
    mask = (torch.rand(n, T, generator=g) > 0.3).double()
    mask[:, 0] = 1
    loss, stats = grpo_loss(logps, old, ref, adv, mask, 0.2, 0.28, beta, how, max_completion_length=10)
    expected = per_token_reference(logps.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(),
                                   0.2, 0.28, beta, how, 10)  # fmt: skip
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert 0 < stats["clip_fraction"].item() < 1
    assert stats["kl"].item() == pytest.approx(float((k3_kl(logps, ref) * mask).sum() / mask.sum()))


def test_on_policy_gradient_is_the_advantage_weighted_log_likelihood():
    """μ = 1: π_old = π_θ (detached), so ∇L = −mean_i Â_i · mean_t ∇log π (sequence_mean, β = 0)."""
    logps = torch.randn(3, 4, dtype=torch.double, requires_grad=True)
    adv, mask = t([1.0, -2.0, 0.5], dtype=torch.double), torch.ones(3, 4, dtype=torch.double)
    loss, stats = grpo_loss(logps, logps.detach(), None, adv, mask)
    loss.backward()
    torch.testing.assert_close(logps.grad, -(adv[:, None] / 4 / 3).expand(3, 4))
    assert stats["ratio"].item() == 1.0 and stats["clip_fraction"].item() == 0.0


def test_aggregate_normalisers():
    x, mask = t([[1.0, 1.0, 0.0], [4.0, 0.0, 0.0]]), t([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert aggregate(x, mask, "sequence_mean", 5).item() == pytest.approx((1 + 4) / 2)
    assert aggregate(x, mask, "token", 5).item() == pytest.approx(6 / 3)
    assert aggregate(x, mask, "dr_grpo", 5).item() == pytest.approx(6 / (2 * 5))


def test_rollout_reuse_replays_each_sampled_step():
    calls = []

    def sample():
        calls.append(1)
        return {"id": torch.tensor(len(calls))}

    reuse = RolloutReuse(iterations=2, accum=1)
    assert [int(reuse.next(sample)["id"]) for _ in range(4)] == [1, 1, 2, 2]
    reuse = RolloutReuse(iterations=2, accum=2)  # one optimizer step = 2 micro-batches, replayed as a whole
    assert [int(reuse.next(sample)["id"]) for _ in range(6)] == [3, 4, 3, 4, 5, 6]
    reuse = RolloutReuse(iterations=1, accum=3)
    assert [int(reuse.next(sample)["id"]) for _ in range(3)] == [7, 8, 9]


# ---- rewards ----


def completion(text, n=10, max_tokens=100, truncated=False):
    return Completion(text, n, max_tokens, truncated)


@pytest.mark.parametrize(
    "text,accuracy,fmt",
    [
        ("<think>\n3 + 4 = 7\n</think>\n\nThe answer is \\boxed{7}.", 1.0, 1.0),
        ("<think>\n3 + 4 = 8\n</think>\n\nThe answer is \\boxed{8}.", 0.0, 1.0),
        ("The answer is 7.", 1.0, 0.0),
        ("<think>\n3 + 4 = 7, so \\boxed{7}", 1.0, 0.0),  # never closed the thinking: not the format
        ("<think>\nhmm\n</think>\n\n7", 1.0, 0.0),  # closed, but no boxed answer
    ],
)
def test_accuracy_and_format_rewards(text, accuracy, fmt):
    task = {"prompt": [], "answer": "7", "meta": {}}
    assert REWARDS["accuracy"](completion(text), task) == accuracy
    assert REWARDS["format"](completion(text), task) == fmt


@pytest.mark.parametrize(
    ("answer", "reference", "accuracy"),
    [
        ("3x", "3y", 0.0),  # gamed: the old checker dropped trailing letters and paid these in full
        ("4x", "4", 0.0),
        ("1,2,3", "123", 0.0),
        ("3t", "3", 0.0),
        ("3y", "3y", 1.0),
        ("y \\cdot 3", "3y", 1.0),
        ("\\frac{1}{2}", "0.5", 1.0),
    ],
)
def test_accuracy_reward_uses_the_eval_checker(answer, reference, accuracy):
    text = f"<think>\nwork\n</think>\n\nThe answer is \\boxed{{{answer}}}."
    task = {"prompt": [], "answer": reference, "meta": {}}
    assert REWARDS["accuracy"](completion(text), task) == accuracy
    assert accuracy == float(answers_match(extract_answer(text), reference))


@pytest.mark.parametrize(
    "n,truncated,expected",
    [(10, False, 0.0), (75, False, 0.0), (80, False, -0.2), (100, False, -1.0), (50, True, -1.0)],
)
def test_length_penalty_is_dapo_soft_overlong(n, truncated, expected):
    assert REWARDS["length_penalty"](completion("x", n, 100, truncated), {}) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>\n8 crates × 9 coins = 72 coins.\n72 - 29 = 43.\n</think>\n\\boxed{43}", 1.0),
        # right final number, wrong steps: accuracy would pay in full, this does not
        ("<think>\n16 - 10 = 7.\n7 ÷ 3 = 2.\n</think>\n\\boxed{2}", 0.0),
        ("<think>\n30 × 4 = 120 km.\n120 - 35 = 115 km.\n</think>\n\\boxed{115}", 0.5),
        ("<think>\n3/4 = 0.75, and 7 x 6 = 42, 1.5 + 1.5 = 3\n</think>\n\\boxed{3}", 1.0),
        ("<think>\n9 ÷ 0 = 0\n</think>", 0.0),
        ("<think>\nno arithmetic here\n</think>\n\\boxed{4}", 0.0),
        ("5 + 5 = 10 outside any think block", 1.0),
    ],
)
def test_arithmetic_process_reward_checks_every_step(text, expected):
    assert REWARDS["arithmetic"](completion(text), {"answer": "0"}) == pytest.approx(expected)


def distinct_chars(c: Completion, task: dict) -> float:
    """A user reward (imported by path in the run test): varies between samples of a random tiny model."""
    return len(set(c.text)) / 10


def test_rewards_by_name_or_import_path():
    assert resolve_reward("accuracy") is REWARDS["accuracy"]
    user = resolve_reward("tests.train.test_grpo:distinct_chars")
    assert user.__name__ == "distinct_chars" and user(completion("abcab"), {}) == 0.3
    assert reward_name("tests.train.test_grpo:distinct_chars") == "distinct_chars"
    with pytest.raises(ConfigError, match="unknown reward 'acuracy'"):
        resolve_reward("acuracy")
    with pytest.raises(ConfigError, match="cannot import"):
        resolve_reward("no_such_pkg.mod:fn")
    with pytest.raises(ConfigError, match="has no function"):
        resolve_reward("math:no_such_fn")
    with pytest.raises(ConfigError, match="not a number"):
        score([lambda c, t: "high"], [completion("x")], [{}])
    assert score([REWARDS["accuracy"], distinct_chars], [completion("7")], [{"answer": "7"}]) == [[1.0, 0.1]]


def test_config_checks():
    assert GRPOConfig(rewards=["accuracy", "format"], reward_weights=[1, 0.5]).weights == [1, 0.5]
    with pytest.raises(ValueError, match="reward_weights"):
        GRPOConfig(rewards=["accuracy"], reward_weights=[1, 2])
    with pytest.raises(ValueError):
        GRPOConfig(num_generations=1)


# ---- the reference, on tiny models ----


@pytest.fixture(scope="module")
def llama(tiny_model_dirs):
    return tiny_model_dirs["llama"]


def fresh_lora(model_dir):
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    return get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )


@pytest.fixture(scope="module")
def rollout(llama, tiny_tokenizer):
    model = fresh_lora(llama).eval()
    prompts = [
        render_prompt(tiny_tokenizer, [{"role": "user", "content": q, "reasoning": None}], None)
        for q in ("What is 3 + 4?", "Tom has 5 apples. He buys 3 more apples. How many apples does Tom have now?")
    ]
    torch.manual_seed(0)
    batch, completions = sample_completions(model, tiny_tokenizer, prompts, 3, 10, 1.0)
    return model, batch, completions


def test_sampled_batch_layout(rollout, tiny_tokenizer):
    _, batch, completions = rollout
    assert batch["input_ids"].shape[0] == 6 and len(completions) == 6
    width = batch["completion_mask"].shape[1]
    stop = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i, c in enumerate(completions):
        ids = batch["input_ids"][i, -width:]
        n = int(batch["completion_mask"][i].sum())
        assert n == c.n_tokens and c.truncated == (stop not in ids[:n].tolist())
        assert batch["labels"][i, -width:][:n].tolist() == ids[:n].tolist()
        assert (batch["labels"][i, :-width] == -100).all() and (batch["labels"][i, -width:][n:] == -100).all()
        if not c.truncated:
            assert ids[n - 1] == stop
        assert c.text == tiny_tokenizer.decode(ids[:n].tolist(), skip_special_tokens=True)
    # position ids skip the left padding of the prompt, as generate() does
    first = batch["attention_mask"].argmax(dim=1)
    for i in range(6):
        assert batch["position_ids"][i, first[i]] == 0


def test_logits_to_keep_gives_the_same_completion_logprobs(rollout):
    model, batch, _ = rollout
    width = batch["completion_mask"].shape[1]
    with torch.no_grad():
        kept = token_logprobs(model, batch, keep=width)
        full = token_logprobs(model, batch)[:, -width:]
    torch.testing.assert_close(kept, full, atol=1e-5, rtol=1e-5)
    assert ((kept != 0) == batch["completion_mask"].bool()).all()


def test_lora_reference_is_the_disabled_adapter_without_a_second_model(rollout, llama, monkeypatch):
    model, batch, _ = rollout
    width = batch["completion_mask"].shape[1]
    params_before = sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(copy, "deepcopy", lambda *a, **k: pytest.fail("the LoRA reference must not copy the model"))
    reference = ReferencePolicy.of(model, starts_at_base=True)
    assert reference.kind == "disabled_adapter" and reference.copy is None
    assert sum(p.numel() for p in model.parameters()) == params_before
    ref = reference.logprobs(model, batch, keep=width)
    with torch.no_grad():
        policy = token_logprobs(model, batch, keep=width)
    # fresh LoRA (B = 0): policy == reference, so the KL is exactly zero
    mask = batch["completion_mask"]
    assert (k3_kl(policy, ref) * mask).abs().max().item() == 0.0
    _, stats = grpo_loss(policy, policy, ref, torch.ones(6), mask, beta=0.04)
    assert stats["kl"].item() == 0.0
    # the reference is the base model: compare with the plain transformers model
    monkeypatch.undo()
    base = AutoModelForCausalLM.from_pretrained(llama).eval()
    with torch.no_grad():
        torch.testing.assert_close(ref, token_logprobs(base, batch, keep=width), atol=1e-5, rtol=1e-5)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.3)
        moved = token_logprobs(model, batch, keep=width)
        torch.testing.assert_close(reference.logprobs(model, batch, keep=width), ref)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.sub_(0.3)
    assert (k3_kl(moved, ref) * mask).sum() > 0


def test_continued_adapter_reference_is_a_frozen_adapter_copy(llama, rollout, tmp_path):
    _, batch, _ = rollout
    width = batch["completion_mask"].shape[1]
    trained = fresh_lora(llama)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    trained.save_pretrained(tmp_path / "adapter")
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(llama), tmp_path / "adapter", is_trainable=True
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    n_params = sum(p.numel() for p in model.parameters())
    reference = ReferencePolicy.of(model, starts_at_base=False)
    assert reference.kind == "adapter" and reference.copy is None
    added = sum(p.numel() for p in model.parameters()) - n_params
    assert added == sum(p.numel() for n in trainable for p in [model.get_parameter(n)])  # adapter-sized, not a model
    ref = reference.logprobs(model, batch, keep=width)
    with torch.no_grad():
        policy = token_logprobs(model, batch, keep=width)
    torch.testing.assert_close(ref, policy)  # starts at the loaded adapter, not at the base model
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    reference.release(model)
    assert list(model.peft_config) == ["default"]


def test_full_model_reference_is_a_frozen_copy(llama, rollout):
    _, batch, _ = rollout
    model = AutoModelForCausalLM.from_pretrained(llama)
    reference = ReferencePolicy.of(model)
    assert reference.kind == "copy" and reference.copy is not model
    assert not any(p.requires_grad for p in reference.copy.parameters())
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # training moves the policy; the reference stays
    assert not torch.equal(next(model.parameters()), next(reference.copy.parameters()))


# ---- dynamic sampling (DAPO) ----


def test_merge_rollouts_keeps_every_completions_logprobs(rollout, tiny_tokenizer):
    model, first, _ = rollout
    long_q = "A bus drives 40 km each hour for 5 hours, then 5 km back. How far is it from the start of the trip?"
    prompt = render_prompt(tiny_tokenizer, [{"role": "user", "content": long_q, "reasoning": None}], None)
    torch.manual_seed(1)
    second, _ = sample_completions(model, tiny_tokenizer, [prompt], 3, 14, 1.0)
    assert second["input_ids"].shape[1] != first["input_ids"].shape[1]  # different prompt and completion widths
    merged = merge_rollouts([first, second], tiny_tokenizer.pad_token_id)
    assert merged["input_ids"].shape[0] == 9
    width = merged["completion_mask"].shape[1]
    with torch.no_grad():
        together = token_logprobs(model, merged, keep=width)
        for part, rows in ((first, slice(0, 6)), (second, slice(6, 9))):
            alone = token_logprobs(model, part, keep=part["completion_mask"].shape[1])
            for i, j in enumerate(range(rows.start, rows.stop)):
                n = int(part["completion_mask"][i].sum())
                assert int(merged["completion_mask"][j].sum()) == n
                torch.testing.assert_close(together[j, :n], alone[i, :n], atol=1e-5, rtol=1e-5)


def signal_only_for_answer_7(c: Completion, task: dict) -> float:
    """A reward with no variance on every task but those whose answer is 7."""
    return float(len(c.text)) if task["answer"] == "7" else 1.0


def fake_run(model, tokenizer):
    from types import SimpleNamespace

    from accelerate import Accelerator

    return SimpleNamespace(
        model=model,
        tokenizer=tokenizer,
        cfg=SimpleNamespace(data=SimpleNamespace(system_prompt=None, thinking="auto")),
        accelerator=Accelerator(cpu=True),
    )


def task(q, answer):
    return {"prompt": [{"role": "user", "content": q, "reasoning": None}], "answer": answer}


def test_dynamic_sampling_trains_only_on_groups_with_reward_variance(rollout, tiny_tokenizer):
    model, _, _ = rollout
    run = fake_run(model, tiny_tokenizer)
    g = GRPOConfig(
        num_generations=3, max_completion_length=8, rewards=["tests.train.test_grpo:signal_only_for_answer_7"]
    )
    fns = [resolve_reward(r) for r in g.rewards]
    flat = [task("What is 1 - 1?", "0"), task("What is 2 - 2?", "0")]
    refill = [task("What is 3 + 4?", "7"), task("What is 10 - 3?", "7")]
    drawn = []

    def pool(k):
        drawn.append(k)
        return refill[:k]

    torch.manual_seed(0)
    batch = rollout_batch(run, flat, g, fns, None, pool)
    assert drawn == [2]  # one refill round of two prompts was enough
    assert batch["input_ids"].shape[0] == 6  # two informative groups × G
    texts = tiny_tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    assert all("3 + 4" in t for t in texts[:3]) and all("10 - 3" in t for t in texts[3:])
    assert batch["advantages"].abs().sum() > 0
    assert batch["sampled_total"].shape[0] == 12  # the reward log covers the dropped groups too
    # without a pool: the micro-batch as sampled, zero-advantage groups included
    plain = rollout_batch(run, flat, g, fns, None)
    assert plain["input_ids"].shape[0] == 6 and plain["advantages"].abs().sum() == 0
    # no informative group anywhere: the first sample is kept after max_resample_rounds
    drawn.clear()
    g2 = g.model_copy(update={"max_resample_rounds": 2})
    none = rollout_batch(run, flat, g2, fns, None, lambda k: drawn.append(k) or flat[:k])
    assert drawn == [2, 2] and none["input_ids"].shape[0] == 6 and none["sampled_total"].shape[0] == 18


# ---- the recipe: 3 steps on the tiny Llama ----


def tiny_cfg(model_dir, out, *extra):
    return load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            f"output_dir={out}",
            "data.max_train_samples=12",
            "train.max_steps=3",
            "train.batch_size=2",
            "train.learning_rate=5e-2",
            "train.warmup_ratio=0",
            "train.report_to=[]",
            "eval.max_samples=2",
            "eval.max_new_tokens=6",
            "eval.batch_size=2",
            *extra,
        ],
    )


def test_three_step_run_logs_rewards_and_trains(llama, tmp_path):
    out = tmp_path / "run"
    g = GRPOConfig(
        num_generations=3,
        max_completion_length=10,
        rewards=["accuracy", "format", "tests.train.test_grpo:distinct_chars"],
        reward_weights=[1.0, 0.5, 1.0],
    )
    summary = run_grpo(tiny_cfg(llama, out).model_copy(update={"grpo": g}), console=Console(quiet=True))
    assert summary["steps"] == 3 and summary["before"] is not None and summary["after"] is not None
    before = json.loads((out / "eval" / "before.json").read_text())["samples"]
    after = json.loads((out / "eval" / "after.json").read_text())["samples"]
    gained = sum(not b["correct"] and a["correct"] for b, a in zip(before, after, strict=True))
    assert summary["paired"]["n"] == 2 and summary["paired"]["gained"] == gained  # before vs after, task by task
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for r in rows:
        for key in ("reward", "reward/accuracy", "reward/format", "reward/distinct_chars", "kl", "clip_fraction",
                    "completion_length", "loss"):  # fmt: skip
            assert math.isfinite(r[key]), key
        assert r["reward"] == pytest.approx(
            r["reward/accuracy"] + 0.5 * r["reward/format"] + r["reward/distinct_chars"]
        )
        assert 1 <= r["completion_length"] <= 10
        assert r["clip_fraction"] == 0.0  # μ = 1: the ratio is exactly 1
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-7)  # first batch: policy == reference
    assert rows[-1]["kl"] > 0  # the adapter moved
    assert (out / "plots" / "reward.png").stat().st_size > 0
    lora = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in lora.items()), "nothing trained"
    saved = json.loads((out / "summary.json").read_text())
    assert saved["reward_plot"].endswith("plots/reward.png") and saved["grpo"]["num_generations"] == 3


def test_dynamic_sampling_run_logs_kept_and_sampled_groups(llama, tmp_path):
    out = tmp_path / "dyn"
    g = GRPOConfig(
        num_generations=3,
        max_completion_length=8,
        rewards=["tests.train.test_grpo:distinct_chars"],
        dynamic_sampling=True,
        beta=0.0,
        loss_aggregation="token",
    )
    cfg = tiny_cfg(llama, out, "train.max_steps=2", "eval.before=false", "eval.after=false")
    run_grpo(cfg.model_copy(update={"grpo": g}), console=Console(quiet=True))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        assert r["trained_groups"] <= 2 <= r["sampled_groups"] and r["rollout_seconds"] > 0
        assert math.isfinite(r["loss"]) and 0 <= r["zero_std_groups"] <= 1
    assert json.loads((out / "summary.json").read_text())["grpo"]["dynamic_sampling"] is True


def test_inner_iterations_record_old_logprobs_and_clip(llama, tmp_path):
    out = tmp_path / "mu"
    g = GRPOConfig(
        num_generations=2,
        max_completion_length=8,
        rewards=["tests.train.test_grpo:distinct_chars"],
        num_iterations=2,
        beta=0.0,
        loss_aggregation="dr_grpo",
        epsilon=0.01,
    )
    cfg = tiny_cfg(llama, out, "train.max_steps=4", "train.learning_rate=2e-1", "eval.before=false", "eval.after=false")
    run_grpo(cfg.model_copy(update={"grpo": g}), console=Console(quiet=True))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and "kl" not in rows[0]  # β = 0: no reference pass
    # step 2 replays step 1's samples after an update: same rewards, ratio ≠ 1
    assert rows[1]["reward"] == rows[0]["reward"] and rows[3]["reward"] == rows[2]["reward"]
    assert rows[0]["ratio"] == pytest.approx(1.0, abs=1e-6)
    assert rows[1]["ratio"] != pytest.approx(1.0, abs=1e-6) or rows[1]["clip_fraction"] > 0


def test_grpo_validates_and_keeps_the_best_weights(llama, tmp_path):
    out = tmp_path / "best"
    g = GRPOConfig(num_generations=2, max_completion_length=6, rewards=["tests.train.test_grpo:distinct_chars"])
    extra = [
        "data.validation=bundled:arithmetic/test",
        "train.eval_steps=1",
        "train.load_best_at_end=true",
        "eval.before=false",
        "eval.after=false",
        "train.max_steps=2",
    ]
    summary = run_grpo(tiny_cfg(llama, out, *extra).model_copy(update={"grpo": g}), console=Console(quiet=True))
    steps = [v["step"] for v in summary["validations"]]
    assert steps == [0, 1, 2] and all("val_loss" in v and "accuracy" in v for v in summary["validations"])
    losses = [v["val_loss"] for v in summary["validations"]]
    assert summary["best_step"] == steps[losses.index(min(losses))]


def test_cli_grpo_with_a_yaml_section(llama, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    cfg_file = tmp_path / "rl.yaml"
    cfg_file.write_text(
        f"name: tiny\nmodel:\n  name_or_path: {llama}\ndata:\n  max_train_samples: 4\n"
        "train:\n  max_steps: 1\n  batch_size: 2\n  report_to: []\neval:\n  before: false\n  after: false\n"
        "grpo:\n  num_generations: 2\n  max_completion_length: 6\n  beta: 0.5\n"
    )
    out = tmp_path / "cli"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "thinktune",
            "grpo",
            "-c",
            str(cfg_file),
            "--reward",
            "format",
            "--beta",
            "0.1",
            "--dynamic-sampling",
            "--set",
            "grpo.temperature=0.9",
            "-o",
            str(out),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "COLUMNS": "200"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "reward curve" in proc.stdout
    saved = json.loads((out / "summary.json").read_text())["grpo"]
    assert saved["rewards"] == ["format"] and saved["beta"] == 0.1 and saved["temperature"] == 0.9
    assert saved["num_generations"] == 2 and saved["dynamic_sampling"] is True
    bad = subprocess.run(
        [sys.executable, "-m", "thinktune", "grpo", "-c", str(cfg_file), "--set", "grpo.epsilonn=0.3"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=600,
    )
    assert bad.returncode == 2 and "grpo.epsilonn" in bad.stderr


# ---- process supervision: step rewards → per-token advantages ----


def test_arithmetic_steps_end_just_after_each_result():
    text = "<think>\n8 crates × 9 coins = 72 coins.\n72 - 29 = 44.\n</think>\n\\boxed{44}"
    steps = STEP_REWARDS["arithmetic_steps"](completion(text), {"answer": "43"})
    assert [s for _, s in steps] == [1.0, 0.0]
    assert text[: steps[0][0]].endswith("= 72") and text[: steps[1][0]].endswith("72 - 29 = 44")
    assert resolve_step_reward("arithmetic_steps") is STEP_REWARDS["arithmetic_steps"]
    with pytest.raises(ConfigError, match="grpo.process_reward: unknown reward 'arith'"):
        resolve_step_reward("arith")
    with pytest.raises(ConfigError, match="not a list of"):
        score_steps(lambda c, t: 0.5, [completion("x")], [{}])


@pytest.mark.parametrize("credit", ["return", "step"])
def test_process_advantages_for_a_known_step_table(credit):
    """G = 2. Completion 0: a right step ending at character 5, a wrong one ending at 10; completion 1: one right
    step ending at 5. Scores [1, 0, 1]: mean 2/3, std (Bessel) 1/√3, normalised [1/√3, −2/√3, 1/√3]."""
    a, b = 1 / math.sqrt(3), -2 / math.sqrt(3)
    steps = [[(5, 1.0), (10, 0.0)], [(5, 1.0)]]
    starts = [[0, 3, 5, 8, 10], [0, 4, 6]]
    adv = process_advantages(steps, starts, 2, width=5, credit=credit, eps=0.0)
    if credit == "return":  # a token gets every step that ends after it starts
        expected = [[a + b, a + b, b, b, 0], [a, a, 0, 0, 0]]
    else:  # only the step it is part of
        expected = [[a, a, b, b, 0], [a, a, 0, 0, 0]]
    torch.testing.assert_close(adv, t(expected), atol=1e-6, rtol=0)
    # without scaling (Dr. GRPO): centred scores only
    centred = process_advantages(steps, starts, 2, 5, "step", scale=False)
    torch.testing.assert_close(centred[0, :4], t([1 / 3, 1 / 3, -2 / 3, -2 / 3]), atol=1e-6, rtol=0)
    # no signal: every step right, or fewer than two steps in the group
    assert process_advantages([[(5, 1.0)], [(5, 1.0), (9, 1.0)]], starts[:2], 2, 5).abs().sum() == 0
    assert process_advantages([[(5, 0.0)], []], starts[:2], 2, 5).abs().sum() == 0


def test_token_char_starts_split_the_decoded_text(rollout, tiny_tokenizer):
    _, batch, completions = rollout
    mask = batch["completion_mask"]
    ids = batch["input_ids"][:, -mask.shape[1] :]
    starts = token_char_starts(tiny_tokenizer, ids, mask.sum(1))
    for i, (row, c) in enumerate(zip(starts, completions, strict=True)):
        assert len(row) == c.n_tokens and row[0] == 0
        assert row == sorted(row) and row[-1] <= len(c.text)
        for k in range(len(row)):  # the text up to token k is the decoded prefix of k tokens
            assert c.text[: row[k]] == tiny_tokenizer.decode(ids[i, :k].tolist(), skip_special_tokens=True)


def test_per_token_advantages_weight_each_tokens_gradient():
    """(N, T) advantages: each token's gradient is its own advantage (token aggregation, μ = 1, β = 0); a constant
    row gives the same loss as the (N,) form."""
    logps = torch.randn(2, 3, dtype=torch.double, requires_grad=True)
    per_token_adv = t([[1.0, -2.0, 0.0], [0.5, 0.5, 0.5]], dtype=torch.double)
    mask = torch.ones(2, 3, dtype=torch.double)
    loss, _ = grpo_loss(logps, logps.detach(), None, per_token_adv, mask, aggregation="token")
    loss.backward()
    torch.testing.assert_close(logps.grad, -per_token_adv / 6)
    same, _ = grpo_loss(logps, logps.detach(), None, t([0.5, 0.5], dtype=torch.double), mask, aggregation="token")
    row, _ = grpo_loss(logps, logps.detach(), None, per_token_adv[1:].expand(2, 3), mask, aggregation="token")
    assert same.item() == pytest.approx(row.item())


def char_steps(c: Completion, task: dict) -> list[tuple[int, float]]:
    """A user step reward (by import path): one step per character, scored 1 for a letter — varies between samples
    of a random tiny model, so process advantages are non-zero even when every outcome reward is equal."""
    return [(k + 1, float(ch.isalpha())) for k, ch in enumerate(c.text)]


def test_process_rollout_keeps_groups_with_step_signal_and_pads_token_advantages(rollout, tiny_tokenizer):
    model, _, _ = rollout
    run = fake_run(model, tiny_tokenizer)
    g = GRPOConfig(
        num_generations=3,
        max_completion_length=8,
        rewards=["format"],
        process_reward="tests.train.test_grpo:char_steps",
    )
    fns = [resolve_reward("format")]
    step_fn = resolve_step_reward("tests.train.test_grpo:char_steps")
    torch.manual_seed(0)
    tasks = [task("What is 1 - 1?", "0"), task("A long question about 40 km, each hour for 5 hours?", "0")]
    batch = rollout_batch(run, tasks, g, fns, None, lambda k: tasks[:k], step_fn)
    assert (batch["reward_total"] == 0).all()  # no outcome signal: the format reward is 0 for a random model
    adv, mask = batch["token_advantages"], batch["completion_mask"]
    assert adv.shape == mask.shape and adv.abs().sum() > 0  # kept for the step signal alone
    assert (adv[mask == 0] == 0).all()
    assert batch["sampled_step_score"].shape[0] == batch["sampled_total"].shape[0]


def test_process_supervised_run_logs_the_step_reward(llama, tmp_path):
    out = tmp_path / "ps"
    g = GRPOConfig(
        num_generations=3,
        max_completion_length=8,
        rewards=["tests.train.test_grpo:distinct_chars"],
        process_reward="tests.train.test_grpo:char_steps",
        process_credit="step",
        dynamic_sampling=True,
        beta=0.0,
        loss_aggregation="token",
    )
    cfg = tiny_cfg(llama, out, "train.max_steps=2", "eval.before=false", "eval.after=false")
    summary = run_grpo(cfg.model_copy(update={"grpo": g}), console=Console(quiet=True))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and summary["grpo"]["process_reward"].endswith(":char_steps")
    for r in rows:
        assert 0 <= r["step_reward/char_steps"] <= 1 and math.isfinite(r["loss"])
    assert (out / "plots" / "reward.png").read_bytes()[:4] == b"\x89PNG"  # reward and step-reward curves


# ---- rollout_backend=vllm: what runs without a GPU ----


class TokenListEngine:
    """Samples with model.generate but hands back token-id lists, as vLLM's engine does: the backend-neutral part of
    sample_completions (rows → padded batch) must give the batch the generate path gives."""

    def sample(self, model, prompt_ids, num_generations, max_new_tokens, temperature, stops):
        pad = model.config.pad_token_id
        width = max(len(r) for r in prompt_ids)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in prompt_ids]).repeat_interleave(num_generations, 0)
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(r) for r in prompt_ids])[:, None]).long()
        out = model.generate(
            input_ids=ids,
            attention_mask=mask.repeat_interleave(num_generations, 0),
            do_sample=True,
            temperature=temperature,
            top_p=None,
            top_k=None,
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=pad,
        )
        rows = []
        for row in out[:, width:].tolist():
            n = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            rows.append(row[:n])
        return rows


def test_token_list_rollouts_build_the_generate_batch(rollout, tiny_tokenizer):
    model, expected, completions = rollout
    prompts = [
        render_prompt(tiny_tokenizer, [{"role": "user", "content": q, "reasoning": None}], None)
        for q in ("What is 3 + 4?", "Tom has 5 apples. He buys 3 more apples. How many apples does Tom have now?")
    ]
    torch.manual_seed(0)
    batch, got = sample_completions(model, tiny_tokenizer, prompts, 3, 10, 1.0, engine=TokenListEngine())
    assert batch.keys() == expected.keys()
    assert all(torch.equal(batch[k], expected[k]) for k in batch)
    assert got == completions


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
def test_weights_for_vllm_carry_the_checkpoint_names_with_the_adapter_merged(tiny_model_dirs, arch):
    from thinktune.train.vllm_rollout import checkpoint_named

    path = tiny_model_dirs[arch]
    saved = load_file(path / "model.safetensors")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(path),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"),
    )
    model.merge_adapter()
    weights = {k: v.clone() for k, v in checkpoint_named(model).items()}  # views: unmerging writes through them
    merged_q = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.clone()
    model.unmerge_adapter()
    # the names vLLM's load_weights reads: the checkpoint's own (fused MoE experts split per expert again)
    assert set(saved) <= set(weights) and set(weights) - set(saved) <= {"lm_head.weight"}
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(weights[q], merged_q) and not torch.equal(weights[q], saved[q])
    assert all(torch.equal(weights[k], saved[k]) for k in saved if "q_proj" not in k and "v_proj" not in k)


def test_vllm_rollouts_without_cuda_or_vllm_stop_in_one_line(llama, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run(
        [sys.executable, "-m", "thinktune", "grpo", "--set", f"model.name_or_path={llama}",
         "--set", "grpo.rollout_backend=vllm", "-o", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "grpo.rollout_backend=vllm needs" in lines[0], proc.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()  # stopped before the run started
