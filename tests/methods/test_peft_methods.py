"""PEFT methods on every tiny architecture they apply to: 3 steps lower the loss on a memorisable batch, the base
stays bit-identical, save → reload gives the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from tests.methods.helpers import eval_logits, load, memorisable_batch, method, train_steps
from thinktune.errors import ConfigError
from thinktune.methods import adalora_ranks, count_parameters, load_trained, merge_trained, save_trained

ALL = ["llama", "qwen3", "qwen3_moe", "deepseek_v3"]
MOE = ["qwen3_moe", "deepseek_v3"]

CASES = (
    [("lora", {}, arch) for arch in ALL]
    + [("lora", {"use_dora": True}, "llama"), ("lora", {"use_rslora": True}, "qwen3")]
    + [("lora", {"init": "gaussian"}, "deepseek_v3"), ("lora", {"init": "pissa"}, "llama")]
    + [("lora", {"expert_lora": True, "dropout": 0.0}, arch) for arch in MOE]
    + [("lora", {"train_router": True}, arch) for arch in MOE]
    + [("adalora", {}, arch) for arch in ALL]
    + [("ia3", {}, arch) for arch in ALL]
    + [("prompt_tuning", {}, arch) for arch in ALL]
    + [("p_tuning", {}, arch) for arch in ("llama", "qwen3_moe")]
    + [("prefix_tuning", {}, arch) for arch in ("llama", "qwen3", "qwen3_moe")]
)


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    return memorisable_batch(tiny_tokenizer)


def base_key(name: str) -> str | None:
    """Name of the base-model parameter a PeftModel parameter wraps; None for adapter parameters."""
    if any(t in name for t in ("lora_", "ia3_", "prompt_encoder", "modules_to_save")):
        return None
    key = name.removeprefix("base_model.model.").removeprefix("base_model.").replace(".base_layer", "")
    return key.replace(".original_module", "")


@pytest.mark.parametrize(("name", "fields", "arch"), CASES, ids=[f"{n}-{a}-{'-'.join(f)}" for n, f, a in CASES])
def test_three_steps_then_save_and_reload(name, fields, arch, tiny_model_dirs, batch, tmp_path):
    cfg = method(name, **fields)
    base_state = {k: v.clone() for k, v in load(tiny_model_dirs[arch]).state_dict().items()}
    model, before, after = train_steps(load(tiny_model_dirs[arch]), cfg, batch)
    assert after < before, f"loss did not drop: {before:.4f} → {after:.4f}"
    trainable, total = count_parameters(model)
    assert 0 < trainable < total

    if fields.get("init") != "pissa":  # PiSSA moves the top singular directions out of the base on purpose
        for pname, p in model.named_parameters():
            key = base_key(pname)
            if key is not None and key in base_state:
                assert torch.equal(p, base_state[key]), f"frozen {key} changed"

    out = save_trained(model, cfg, tmp_path)
    assert out == tmp_path / "adapter" and (out / "adapter_config.json").is_file()
    tuned = eval_logits(model, batch)
    reloaded = load_trained(load(tiny_model_dirs[arch]), out)
    exact = fields.get("init") != "pissa" and name != "adalora"  # both re-shape the adapter on save
    torch.testing.assert_close(
        eval_logits(reloaded, batch), tuned, rtol=0 if exact else 1e-5, atol=0 if exact else 1e-5
    )


def test_router_trains_only_as_a_saved_copy(tiny_model_dirs, batch):
    base = load(tiny_model_dirs["qwen3_moe"])
    router = base.model.layers[0].mlp.gate.weight.clone()
    model, _, _ = train_steps(base, method("lora", train_router=True), batch)
    names = [n for n, p in model.named_parameters() if p.requires_grad and "mlp.gate" in n]
    assert names and all("modules_to_save" in n for n in names)
    assert torch.equal(model.base_model.model.model.layers[0].mlp.gate.original_module.weight, router)
    assert not torch.equal(model.base_model.model.model.layers[0].mlp.gate.modules_to_save["default"].weight, router)


def test_expert_lora_adapts_fused_experts_and_shared_experts(tiny_model_dirs, batch):
    model, _, _ = train_steps(
        load(tiny_model_dirs["deepseek_v3"]), method("lora", expert_lora=True, dropout=0.0), batch
    )
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("mlp.experts" in n and "lora_A" in n for n in names)
    assert any("shared_experts.down_proj.lora_A" in n for n in names)
    assert any("layers.0.mlp.gate_proj.lora_A" in n for n in names)  # the dense first layer
    assert not any("mlp.gate." in n for n in names)  # router frozen by default


def test_prefix_tuning_refuses_latent_attention(tiny_model_dirs):
    from thinktune.methods import apply_method

    with pytest.raises(ConfigError, match="prefix_tuning does not support 'deepseek_v3'"):
        apply_method(load(tiny_model_dirs["deepseek_v3"]), method("prefix_tuning"))


def test_adalora_reaches_target_budget_and_writes_ranks(tiny_model_dirs, batch, tmp_path):
    cfg = method("adalora", r=4, target_r=2)
    model, before, after = train_steps(load(tiny_model_dirs["llama"]), cfg, batch, steps=10, lr=0.05)
    ranks = adalora_ranks(model)
    assert len(ranks) == 14 and sum(ranks.values()) == 2 * len(ranks)  # budget: target_r per module on average
    assert len(set(ranks.values())) > 1  # the budget moved between modules
    out = save_trained(model, cfg, tmp_path)
    assert json.loads((out / "ranks.json").read_text()) == ranks


def test_adalora_step_works_after_gradients_were_dropped(tiny_model_dirs, batch):
    """The recipe may zero gradients (set_to_none) before on_optimizer_step: the kept references still serve."""
    from thinktune.methods import MethodContext, apply_method, on_optimizer_step
    from thinktune.train.engine.losses import causal_lm_loss

    cfg = method("adalora", r=4, target_r=2)
    model = apply_method(load(tiny_model_dirs["llama"]), cfg, MethodContext(total_steps=2))
    causal_lm_loss(model(input_ids=batch["input_ids"]).logits, batch["labels"]).backward()
    model.zero_grad(set_to_none=True)
    on_optimizer_step(model, cfg, 1)  # would raise on p.grad None without the kept references
    on_optimizer_step(model, cfg, 2)
    assert model.peft_config["default"].rank_pattern


def test_merge_folds_lora_into_a_plain_model(tiny_model_dirs, batch, tmp_path):
    cfg = method("lora")
    model, _, _ = train_steps(load(tiny_model_dirs["qwen3"]), cfg, batch)
    out = save_trained(model, cfg, tmp_path)
    merged = merge_trained(load(tiny_model_dirs["qwen3"]), out)
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(eval_logits(merged, batch), eval_logits(model, batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["prompt_tuning", "p_tuning", "prefix_tuning"])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_prompt_methods_generate_with_the_cache_as_without(name, arch, tiny_model_dirs, batch, tmp_path):
    """`generate` (KV cache) gives the greedy tokens of a full forward pass per step, trained and reloaded — under
    transformers 5, PEFT's prompt-learning generation missed the cache and re-injected its virtual tokens each step."""
    model, _, _ = train_steps(load(tiny_model_dirs[arch]), method(name), batch)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 1)  # virtual tokens that change the continuation
    reloaded = load_trained(load(tiny_model_dirs[arch]), save_trained(model, method(name), tmp_path))
    ids = batch["input_ids"][:1, :6]
    for m in (model.eval(), reloaded.eval()):
        with torch.no_grad():
            out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
            seq = ids
            for _ in range(10):
                step = m(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[:, -1]
                seq = torch.cat([seq, step.argmax(-1, keepdim=True)], dim=1)
        new = out[0, 6:].tolist()  # shorter where an end token came first
        assert len(new) >= 2 and new == seq[0, 6 : 6 + len(new)].tolist()
