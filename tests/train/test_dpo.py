"""Preference losses: hand-derived values, TRL's loss functions as an oracle, log-probs on a tiny model, the
reference without a second model, and the DPO recipe end to end (every loss) on the tiny Llama."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from rich.console import Console
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from thinktune.cli.app import build_config
from thinktune.cli.rl import option_sets
from thinktune.config import DPOConfig, load_config
from thinktune.data.collate import pad_batch
from thinktune.errors import ConfigError
from thinktune.train.dpo import run_dpo, tokenize_answer
from thinktune.train.objectives.preference import PairLogps, dpo_loss, ipo_loss, kto_loss, orpo_loss, simpo_loss
from thinktune.train.policy import ReferencePolicy, token_logprobs

t = torch.tensor


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---- hand-derived values ----


def test_dpo_hand_values():
    # h = (−1 − (−1.5)) − (−2 − (−1.5)) = 1 → −log σ(0.1)
    loss = dpo_loss(t([-1.0]), t([-2.0]), t([-1.5]), t([-1.5]), beta=0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.1)))
    smoothed = dpo_loss(t([-1.0]), t([-2.0]), t([-1.5]), t([-1.5]), beta=0.1, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(-0.9 * math.log(sigmoid(0.1)) - 0.1 * math.log(sigmoid(-0.1)))
    # policy == reference: log 2 whatever β
    assert dpo_loss(t([-3.0]), t([-7.0]), t([-3.0]), t([-7.0]), beta=5.0).item() == pytest.approx(math.log(2))


def test_ipo_hand_values():
    # per-token log-ratios: chosen (−4 + 5)/2 = 0.5, rejected (−6 + 5)/3 = −1/3 → h = 5/6; β = 0.5 → target 1
    loss = ipo_loss(t([-4.0]), t([-6.0]), t([-5.0]), t([-5.0]), t([2]), t([3]), beta=0.5)
    assert loss.item() == pytest.approx((5 / 6 - 1) ** 2)


def test_simpo_hand_values():
    # mean log-probs −2/4 = −0.5 and −6/3 = −2: margin 1.5; β = 2, γ = 0.5 → −log σ(2.5)
    loss = simpo_loss(t([-2.0]), t([-6.0]), t([4]), t([3]), beta=2.0, gamma=0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-2.5)))


def test_orpo_hand_values():
    # P(y_w) = 0.5 (odds 1), P(y_l) = 0.2 (odds 1/4): log odds ratio log 4; NLL = log 2 → log 2 − λ·log σ(log 4)
    n = 3
    loss = orpo_loss(t([n * math.log(0.5)]), t([n * math.log(0.2)]), t([n]), t([n]), lam=0.1)
    assert loss.item() == pytest.approx(math.log(2) - 0.1 * math.log(4 / 5), rel=1e-6)


def test_kto_hand_values():
    loss = kto_loss(t([1.0]), t([-1.0]), t(0.5), beta=1.0, desirable_weight=2.0, undesirable_weight=1.0)
    assert loss.tolist() == pytest.approx([2 * (1 - sigmoid(0.5)), 1 - sigmoid(1.5)])
    # A negative KL estimate is clamped to 0 (the reference point is never below the reference policy).
    clamped = kto_loss(t([1.0]), t([-1.0]), t(-3.0), beta=1.0)
    assert clamped.tolist() == pytest.approx([1 - sigmoid(1.0), 1 - sigmoid(1.0)])


def test_kto_reference_point_gets_no_gradient():
    kl = t(0.3, requires_grad=True)
    chosen = t([0.5], requires_grad=True)
    kto_loss(chosen, t([-0.5]), kl, beta=0.5).sum().backward()
    assert kl.grad is None and chosen.grad is not None


# ---- TRL's loss functions as the oracle ----

trl_cpo = pytest.importorskip("trl.experimental.cpo", reason="TRL is the test oracle (pip install trl)")
trl_orpo = pytest.importorskip("trl.experimental.orpo")


def trl_cpo_loss(loss_type: str, chosen, rejected, beta: float, gamma: float = 0.5, label_smoothing: float = 0.0):
    """TRL's CPO loss (its `sigmoid`, `ipo` and `simpo` branches) called on our inputs."""
    trainer = SimpleNamespace(
        alpha=0.0,
        loss_type=loss_type,
        beta=beta,
        simpo_gamma=gamma,
        label_smoothing=label_smoothing,
        accelerator=SimpleNamespace(device="cpu"),
    )
    return trl_cpo.CPOTrainer.cpo_loss(trainer, chosen, rejected)[0]


@pytest.fixture
def random_pairs():
    g = torch.Generator().manual_seed(0)
    n = 16
    lengths_c = torch.randint(1, 40, (n,), generator=g)
    lengths_r = torch.randint(1, 40, (n,), generator=g)
    per_token = lambda lengths: -(torch.rand(n, generator=g) * 3 + 0.05) * lengths  # noqa: E731
    return SimpleNamespace(
        c=per_token(lengths_c).double(),
        r=per_token(lengths_r).double(),
        rc=per_token(lengths_c).double(),
        rr=per_token(lengths_r).double(),
        lc=lengths_c,
        lr=lengths_r,
    )


@pytest.mark.parametrize("beta,smoothing", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2)])
def test_dpo_matches_trl(random_pairs, beta, smoothing):
    p = random_pairs
    ours = dpo_loss(p.c, p.r, p.rc, p.rr, beta, smoothing)
    # TRL's sigmoid loss on (log-ratio chosen, log-ratio rejected) is DPO's (CPO = DPO without the reference).
    theirs = trl_cpo_loss("sigmoid", p.c - p.rc, p.r - p.rr, beta, label_smoothing=smoothing)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0])
def test_ipo_matches_trl(random_pairs, beta):
    p = random_pairs
    ours = ipo_loss(p.c, p.r, p.rc, p.rr, p.lc, p.lr, beta)
    theirs = trl_cpo_loss("ipo", (p.c - p.rc) / p.lc, (p.r - p.rr) / p.lr, beta)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("beta,gamma", [(2.0, 0.5), (2.5, 1.4)])
def test_simpo_matches_trl(random_pairs, beta, gamma):
    p = random_pairs
    ours = simpo_loss(p.c, p.r, p.lc, p.lr, beta, gamma)
    theirs = trl_cpo_loss("simpo", p.c / p.lc, p.r / p.lr, beta, gamma)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("lam", [0.1, 0.25])
def test_orpo_matches_trl(random_pairs, lam):
    p = random_pairs
    ours = orpo_loss(p.c, p.r, p.lc, p.lr, lam)
    trainer = SimpleNamespace(beta=lam, accelerator=SimpleNamespace(device="cpu"))
    ratio_term = trl_orpo.ORPOTrainer.odds_ratio_loss(trainer, p.c / p.lc, p.r / p.lr)[0]
    nll = -p.c / p.lc
    torch.testing.assert_close(ours, (nll - ratio_term).to(ours.dtype))  # TRL: loss = NLL − mean(λ·log σ(·))


def test_kto_matches_a_per_sample_reimplementation(random_pairs):
    p = random_pairs
    kl = t(0.7, dtype=torch.double)
    ours = kto_loss(p.c - p.rc, p.r - p.rr, kl, beta=0.1, desirable_weight=1.3, undesirable_weight=0.8)
    expected = [1.3 * (1 - sigmoid(0.1 * (float(c - rc) - 0.7))) for c, rc in zip(p.c, p.rc, strict=True)]
    expected += [0.8 * (1 - sigmoid(0.1 * (0.7 - float(r - rr)))) for r, rr in zip(p.r, p.rr, strict=True)]
    assert ours.tolist() == pytest.approx(expected, rel=1e-9)


# ---- log-probs on a tiny model ----


@pytest.fixture(scope="module")
def tiny(tiny_model_dirs, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]).eval()
    prompt = [{"role": "user", "content": "What is 3 + 4?", "reasoning": None}]
    answers = [
        {"role": "assistant", "content": "The answer is \\boxed{7}.", "reasoning": "3 + 4 = 7"},
        {"role": "assistant", "content": "The answer is 12.", "reasoning": None},
    ]
    samples = [tokenize_answer(tiny_tokenizer, prompt, a, None, None) for a in answers]
    return model, pad_batch(samples, tiny_tokenizer.pad_token_id)


def test_sequence_logprobs_match_trl_and_a_plain_computation(tiny):
    model, batch = tiny
    with torch.no_grad():
        ours = token_logprobs(model, batch).sum(-1)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    theirs = trl_orpo.ORPOTrainer.get_batch_logps(logits, batch["labels"])
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-5)
    for i in range(2):  # one sequence at a time, no padding, full log-softmax
        n = int(batch["attention_mask"][i].sum())
        lp = torch.log_softmax(logits[i, : n - 1].double(), -1)
        plain = sum(lp[t, batch["input_ids"][i, t + 1]] for t in range(n - 1) if batch["labels"][i, t + 1] != -100)
        assert float(ours[i]) == pytest.approx(float(plain), abs=1e-3)


def test_labels_cover_only_the_final_answer(tiny_tokenizer):
    prompt = [
        {"role": "user", "content": "2+2?", "reasoning": None},
        {"role": "assistant", "content": "4", "reasoning": None},
        {"role": "user", "content": "and 3+3?", "reasoning": None},
    ]
    sample = tokenize_answer(
        tiny_tokenizer, prompt, {"role": "assistant", "content": "6", "reasoning": None}, None, None
    )
    trained = tiny_tokenizer.decode([x for x in sample.labels if x != -100])
    assert trained.startswith("6") and "4" not in trained


def test_reference_is_the_disabled_adapter_and_dpo_starts_at_log2(tiny, monkeypatch):
    model, batch = tiny
    peft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model.config._name_or_path),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    import copy

    monkeypatch.setattr(copy, "deepcopy", lambda *a, **k: pytest.fail("the reference must not copy the model"))
    reference = ReferencePolicy.of(peft, starts_at_base=True)
    assert reference.kind == "disabled_adapter" and reference.copy is None
    with torch.no_grad():
        policy = token_logprobs(peft, batch).sum(-1)
    ref = reference.logprobs(peft, batch).sum(-1)
    torch.testing.assert_close(ref, token_logprobs(model, batch).sum(-1).detach())
    c, r = policy.chunk(2)
    rc, rr = ref.chunk(2)
    assert dpo_loss(c, r, rc, rr, beta=0.1).item() == pytest.approx(math.log(2), abs=1e-5)
    with torch.no_grad():  # once the adapter moves, policy and reference differ
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        moved = token_logprobs(peft, batch).sum(-1)
    assert not torch.allclose(moved, ref)
    torch.testing.assert_close(reference.logprobs(peft, batch).sum(-1), ref)


# ---- the recipe ----


def write_prefs(path, n=10):
    rows = []
    for i in range(n):
        a = 3 + i
        rows.append(
            {
                "prompt": f"Tom has {i} apples and buys 3 more. How many apples does Tom have?",
                "chosen": {"role": "assistant", "reasoning_content": f"{i} + 3 = {a}", "content": f"\\boxed{{{a}}}"},
                "rejected": f"The answer is {a + 1}.",
            }
        )
    rows.append({"prompt": "broken", "chosen": "same", "rejected": "same"})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def tiny_cfg(model_dir, out, *extra):
    return load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            f"output_dir={out}",
            "train.max_steps=2",
            "train.batch_size=2",
            "train.learning_rate=1e-2",
            "train.report_to=[]",
            "eval.before=false",
            "eval.after=false",
            *extra,
        ],
    )


@pytest.mark.parametrize("loss", ["dpo", "ipo", "simpo", "orpo", "kto"])
def test_recipe_trains_every_loss(tiny_model_dirs, tmp_path, loss):
    prefs = write_prefs(tmp_path / "prefs.jsonl")
    out = tmp_path / "run"
    summary = run_dpo(
        tiny_cfg(tiny_model_dirs["llama"], out).model_copy(update={"dpo": DPOConfig(loss=loss)}),
        [str(prefs)],
        None,
        Console(quiet=True),
    )
    assert summary["steps"] == 2 and summary["pairs"] == 10 and summary["rejected_records"] == 1
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin"} <= set(rows[0])
    if loss in ("dpo", "kto"):  # step 1: policy == reference
        expected = math.log(2) if loss == "dpo" else 0.5
        assert rows[0]["loss"] == pytest.approx(expected, abs=1e-4)
    if loss == "kto":
        assert "kl" in rows[0]
    lora = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in lora.items())
    if loss == "dpo":  # the adapter names its base and has a model card, as an SFT run's does
        from huggingface_hub import ModelCard

        card = ModelCard.load(out / "adapter" / "README.md")
        assert card.data.library_name == "peft" and "thinktune" in card.data.tags
    assert (
        json.loads((out / "rejects.jsonl").read_text().splitlines()[0])["reason"] == "chosen and rejected are identical"
    )


def test_live_reference_equals_cached(tiny_model_dirs, tmp_path):
    prefs = write_prefs(tmp_path / "prefs.jsonl")
    losses = {}
    for mode in ("cached", "live"):
        out = tmp_path / mode
        run_dpo(
            tiny_cfg(tiny_model_dirs["llama"], out).model_copy(update={"dpo": DPOConfig(reference=mode)}),
            [str(prefs)],
            None,
            Console(quiet=True),
        )
        losses[mode] = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses["cached"] == pytest.approx(losses["live"], abs=1e-5)


def test_continuing_an_adapter_uses_a_frozen_copy_of_it(tiny_model_dirs, tmp_path):
    prefs = write_prefs(tmp_path / "prefs.jsonl")
    first = tmp_path / "first"
    run_dpo(
        tiny_cfg(tiny_model_dirs["llama"], first).model_copy(update={"dpo": DPOConfig()}),
        [str(prefs)],
        None,
        Console(quiet=True),
    )
    second = tmp_path / "second"
    run_dpo(
        tiny_cfg(tiny_model_dirs["llama"], second).model_copy(update={"dpo": DPOConfig()}),
        [str(prefs)],
        str(first / "adapter"),
        Console(quiet=True),
    )
    rows = [json.loads(x) for x in (second / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # reference = the starting adapter, not the base
    assert not (second / "adapter" / "reference").exists()
    before = load_file(first / "adapter" / "adapter_model.safetensors")
    after = load_file(second / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


# ---- config: the dpo: section of the run config ----


def test_dpo_section_from_yaml_and_overrides(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("name: pref\ntrain:\n  learning_rate: 5.0e-6\ndpo:\n  loss: ipo\n  beta: 0.3\n")
    cfg = build_config(cfg_file, ["dpo.label_smoothing=0.1"], None)
    dpo = cfg.dpo
    assert cfg.train.learning_rate == 5e-6 and dpo.loss == "ipo" and dpo.beta == 0.3 and dpo.label_smoothing == 0.1
    dpo = build_config(cfg_file, option_sets("dpo", loss="simpo", beta=None), None).dpo
    assert dpo.loss == "simpo" and dpo.beta_value == 0.3
    assert DPOConfig(loss="simpo").beta_value == 2.0
    with pytest.raises(ConfigError, match="dpo.loss"):
        build_config(cfg_file, ["dpo.loss=ppo"], None)
    with pytest.raises(ConfigError, match="dpo.betta"):
        build_config(cfg_file, ["dpo.betta=1"], None)


def test_pair_logps_dataclass_order():
    p = PairLogps(*t([1.0, 2.0, 3.0, 4.0]).chunk(2), *t([5, 6, 7, 8]).chunk(2))
    assert p.chosen.tolist() == [1, 2] and p.rejected.tolist() == [3, 4] and p.rejected_len.tolist() == [7, 8]
