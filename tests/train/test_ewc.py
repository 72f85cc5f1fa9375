"""EWC: the penalty's shape, Fisher computation, name matching through PEFT, the Fisher file, and a two-task toy run
where EWC keeps the first task that plain fine-tuning forgets."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from thinktune.errors import ConfigError
from thinktune.train.engine.ewc import EWCPenalty, canonical_name, compute_fisher, load_fisher, save_fisher
from thinktune.train.engine.losses import causal_lm_loss


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine their spinning costs 10-30×."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def llama(tiny_model_dirs):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])


def sequences(vocab: int, n: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, vocab, (n, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


def lm_loss(model, batch) -> torch.Tensor:
    return causal_lm_loss(model(input_ids=batch["input_ids"]).logits, batch["labels"])


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "name,canonical",
    [
        ("model.norm.weight", "model.norm.weight"),
        ("base_model.model.model.norm.weight", "model.norm.weight"),
        ("module.base_model.model.lm_head.weight", "lm_head.weight"),
        ("_orig_mod.model.embed_tokens.weight", "model.embed_tokens.weight"),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
            "model.layers.0.self_attn.q_proj.weight",
        ),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
            "model.layers.0.self_attn.q_proj.lora_A.default.weight",
        ),
    ],
)
def test_canonical_name(name, canonical):
    assert canonical_name(name) == canonical


def test_penalty_is_zero_at_the_anchor_and_quadratic_in_the_distance(llama):
    names = ["model.norm.weight", "lm_head.weight"]
    params = dict(llama.named_parameters())
    fisher = {n: torch.rand_like(params[n]) for n in names}
    ewc = EWCPenalty(fisher, snapshot(llama), lam=3.0)
    assert ewc(llama).item() == 0

    with torch.no_grad():
        params["lm_head.weight"] += 0.1
    one = ewc(llama)
    expected = 3.0 / 2 * (fisher["lm_head.weight"] * 0.1**2).sum()
    torch.testing.assert_close(one, expected)
    with torch.no_grad():
        params["lm_head.weight"] += 0.1
    torch.testing.assert_close(ewc(llama), 4 * one)
    # Parameters the Fisher file does not name cost nothing.
    with torch.no_grad():
        params["model.embed_tokens.weight"] += 1.0
    torch.testing.assert_close(ewc(llama), 4 * one)
    # The penalty has a gradient pointing back to the anchor.
    ewc(llama).backward()
    assert (params["lm_head.weight"].grad > 0).all() and params["model.embed_tokens.weight"].grad is None


def test_penalty_matches_peft_wrapped_names(llama):
    anchor = snapshot(llama)
    fisher = {n: torch.ones_like(p) for n, p in anchor.items()}
    peft_model = get_peft_model(llama, LoraConfig(r=2, target_modules=["q_proj"]))
    ewc = EWCPenalty(fisher, anchor, lam=1.0)
    assert ewc(peft_model).item() == 0
    q = dict(peft_model.named_parameters())["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"]
    with torch.no_grad():
        q += 0.5
    torch.testing.assert_close(ewc(peft_model), torch.tensor(0.5 * q.numel() * 0.25))


def test_compute_fisher_is_the_mean_squared_gradient(llama):
    vocab = llama.config.vocab_size
    batches = [sequences(vocab, 2, 8, seed) for seed in (0, 1)]
    llama.lm_head.weight.requires_grad_(False)
    llama.train()
    params = [(n, p) for n, p in llama.named_parameters() if n in ("lm_head.weight", "model.norm.weight")]
    fisher = compute_fisher(llama, batches, params)

    assert set(fisher) == {"lm_head.weight", "model.norm.weight"}
    assert llama.training and not llama.lm_head.weight.requires_grad
    assert all(p.grad is None for p in llama.parameters())
    llama.eval()
    llama.lm_head.weight.requires_grad_(True)
    expected = torch.zeros_like(llama.lm_head.weight)
    for batch in batches:
        llama.zero_grad()
        lm_loss(llama, batch).backward()
        expected += llama.lm_head.weight.grad**2 / len(batches)
    torch.testing.assert_close(fisher["lm_head.weight"], expected)
    assert fisher["model.norm.weight"].sum() > 0


def test_fisher_file_round_trip_and_user_errors(llama, tmp_path):
    fisher = {"model.norm.weight": torch.rand(llama.config.hidden_size)}
    path = save_fisher(tmp_path / "fisher.pt", fisher, llama.named_parameters())
    loaded, anchor = load_fisher(path)
    torch.testing.assert_close(loaded["model.norm.weight"], fisher["model.norm.weight"])
    torch.testing.assert_close(anchor["model.norm.weight"], llama.model.norm.weight.detach())
    assert set(anchor) == {"model.norm.weight"}

    with pytest.raises(ConfigError, match="not found"):
        load_fisher(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a tensor file")
    with pytest.raises(ConfigError, match="ewc_fisher"):
        load_fisher(tmp_path / "junk.pt")
    with pytest.raises(ConfigError, match="no parameter"):
        EWCPenalty({"other.weight": torch.ones(2)}, {"other.weight": torch.ones(2)}, 1.0)(llama)
    with pytest.raises(ConfigError, match="shape"):
        EWCPenalty({"model.norm.weight": torch.ones(3)}, {"model.norm.weight": torch.ones(3)}, 1.0)(llama)


def fit(model, batch, steps: int, ewc: EWCPenalty | None = None) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = lm_loss(model, batch)
        if ewc is not None:
            loss = loss + ewc(model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def test_ewc_keeps_the_old_task_that_plain_fine_tuning_forgets(llama, tmp_path, one_thread):
    torch.manual_seed(0)
    vocab = llama.config.vocab_size
    task_a, task_b = sequences(vocab, 4, 16, seed=10), sequences(vocab, 4, 16, seed=11)
    fit(llama, task_a, 30)
    per_sample = [{k: v[i : i + 1] for k, v in task_a.items()} for i in range(4)]
    fisher = compute_fisher(llama, per_sample, list(llama.named_parameters()))
    fisher, anchor = load_fisher(save_fisher(tmp_path / "fisher.pt", fisher, llama.named_parameters()))
    after_a = {k: v.clone() for k, v in llama.state_dict().items()}

    results = {}
    # λ is large because the Fisher of a memorised task is tiny (squared gradients of a loss near 0, ~1e-6 here).
    for name, ewc in [("plain", None), ("ewc", EWCPenalty(fisher, anchor, lam=1e7))]:
        llama.load_state_dict(after_a)
        fit(llama, task_b, 30, ewc)
        with torch.no_grad():
            results[name] = (lm_loss(llama, task_a).item(), lm_loss(llama, task_b).item())
    with torch.no_grad():
        llama.load_state_dict(after_a)
        a_after_a = lm_loss(llama, task_a).item()
    print(f"task A loss after A {a_after_a:.3f}; after B (A, B): plain {results['plain']}, EWC {results['ewc']}")
    assert results["ewc"][0] < 0.5 * results["plain"][0]
    assert results["ewc"][1] < 1.0  # B is still learnt under the penalty
