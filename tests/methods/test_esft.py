"""ESFT (Wang et al. 2024): routing profile, expert selection, and training only the selected experts."""

from __future__ import annotations

import json

import pytest
import torch

from tests.methods.helpers import eval_logits, load, memorisable_batch, method, samples_of, train_steps
from thinktune.errors import ConfigError
from thinktune.methods import MethodContext, apply_method, count_parameters, load_trained, save_trained
from thinktune.methods.base import method_state
from thinktune.methods.expert_usage import expert_usage, moe_layers, plot_expert_usage, select_experts
from thinktune.models.registry import arch_facts

MOE = ["qwen3_moe", "deepseek_v3"]


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    return memorisable_batch(tiny_tokenizer)


@pytest.mark.parametrize(
    ("share", "threshold", "expected"),
    [
        ([0.5, 0.3, 0.2], 0.2, [0]),
        ([0.5, 0.3, 0.2], 0.6, [0, 1]),
        ([0.1, 0.2, 0.7], 0.7, [2]),
        ([0.25, 0.25, 0.25, 0.25], 1.0, [0, 1, 2, 3]),
        ([0.25, 0.25, 0.25, 0.25], 0.3, [0, 1]),  # ties: lower index first
    ],
)
def test_select_fewest_experts_reaching_threshold(share, threshold, expected):
    assert select_experts(torch.tensor([share]), threshold) == [expected]


@pytest.mark.parametrize("arch", MOE)
def test_router_output_is_logits_weights_indices(arch, tiny_model_dirs, batch):
    """The hooks rely on transformers 5's router returning (logits, top-k weights, top-k indices)."""
    model = load(tiny_model_dirs[arch])
    moe = moe_layers(model, arch_facts(arch))[0]
    seen = []
    handle = moe.router.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        model(input_ids=batch["input_ids"][:1])
    handle.remove()
    logits, weights, indices = seen[0]
    k = model.config.num_experts_per_tok
    assert logits.shape[-1] == moe.num_experts and weights.shape[-1] == k and indices.shape[-1] == k
    assert indices.dtype == torch.long and int(indices.max()) < moe.num_experts


@pytest.mark.parametrize("arch", MOE)
def test_expert_usage_shares_sum_to_one(arch, tiny_model_dirs, batch, tmp_path):
    model = load(tiny_model_dirs[arch])
    usage = expert_usage(model, samples_of(batch), arch_facts(arch))
    assert usage.samples == 2 and usage.tokens == int(batch["attention_mask"].sum())
    assert usage.layers == ([0, 1] if arch == "qwen3_moe" else [1])  # DeepSeek's first layer is dense
    for share in (usage.gate_share, usage.token_ratio):
        torch.testing.assert_close(share.sum(-1), torch.ones(len(usage.layers)))
    assert plot_expert_usage(usage, tmp_path / "u.png").stat().st_size > 1000


@pytest.mark.parametrize("arch", MOE)
@pytest.mark.parametrize("score", ["gate", "token"])
def test_only_selected_experts_train(arch, score, tiny_model_dirs, batch, tmp_path):
    cfg = method("esft", esft_threshold=0.5, esft_score=score)
    base = {n: p.detach().clone() for n, p in load(tiny_model_dirs[arch]).named_parameters()}
    model, before, after = train_steps(load(tiny_model_dirs[arch]), cfg, batch)
    assert after < before
    rows = method_state(model)["esft"]["rows"]
    params = dict(model.named_parameters())
    for n, p in params.items():
        if n not in rows:
            assert torch.equal(p, base[n]), f"non-expert {n} changed"
            continue
        for e in range(p.shape[0]):
            same = torch.equal(p[e], base[n][e])
            assert same is (e not in rows[n]), f"{n} expert {e}: selected={e in rows[n]}, unchanged={same}"

    trainable, total = count_parameters(model)
    expected = sum(params[n][0].numel() * len(r) for n, r in rows.items())
    assert trainable == expected < total

    out = save_trained(model, cfg, tmp_path)
    experts = json.loads((out / "experts.json").read_text())
    assert experts["score"] == score and experts["threshold"] == 0.5
    selected = {int(layer): v["selected"] for layer, v in experts["layers"].items()}
    assert all(selected[int(n.split(".layers.")[1].split(".")[0])] == r for n, r in rows.items())
    reloaded = load_trained(load(tiny_model_dirs[arch]), out)
    assert torch.equal(eval_logits(reloaded, batch), eval_logits(model, batch))


def test_weight_decay_on_fused_experts_stops_the_run(tiny_model_dirs, batch):
    with pytest.raises(ConfigError, match="train.weight_decay=0"):
        train_steps(load(tiny_model_dirs["qwen3_moe"]), method("esft"), batch, weight_decay=0.1)


def test_esft_needs_moe_and_samples(tiny_model_dirs, batch):
    with pytest.raises(ConfigError, match="mixture-of-experts"):
        apply_method(load(tiny_model_dirs["llama"]), method("esft"), MethodContext(samples=samples_of(batch)))
    with pytest.raises(ConfigError, match="no"):
        apply_method(load(tiny_model_dirs["qwen3_moe"]), method("esft"), MethodContext())


def test_router_trains_with_train_router(tiny_model_dirs, batch):
    model, _, _ = train_steps(load(tiny_model_dirs["deepseek_v3"]), method("esft", train_router=True), batch)
    assert model.model.layers[1].mlp.gate.weight.requires_grad
    assert not model.model.layers[1].mlp.shared_experts.gate_proj.weight.requires_grad
