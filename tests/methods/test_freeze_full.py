"""freeze / full / progressive unfreezing: exactly the chosen weights move, the rest stay bit-identical, and the
saved tensors put back onto a fresh base give the same logits."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.methods.helpers import eval_logits, load, memorisable_batch, method, train_steps
from thinktune.errors import ConfigError
from thinktune.methods import count_parameters, load_trained, optimizer_parameters, save_trained
from thinktune.runs import METHOD_FILE, TRAINED

CASES = [
    ("freeze", {"trainable": "top_layers", "top_layers": 1}, "llama", r"layers\.1\."),
    ("freeze", {"trainable": "attention"}, "qwen3", r"self_attn\."),
    ("freeze", {"trainable": "mlp"}, "qwen3_moe", r"mlp\.experts\."),
    ("freeze", {"trainable": "mlp"}, "deepseek_v3", r"mlp\.(?!gate\.)"),
    (
        "freeze",
        {"trainable": "regex", "trainable_regex": r"layers\.0\.self_attn\.(q|k)_proj"},
        "llama",
        r"layers\.0\.self_attn\.(q|k)_proj",
    ),
    ("full", {}, "llama", r"."),
    ("full", {}, "deepseek_v3", r"^(?!.*mlp\.gate\.)"),
]


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    return memorisable_batch(tiny_tokenizer)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("name", "fields", "arch", "trained"), CASES, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)]
)
def test_only_chosen_weights_move_and_reload_is_exact(name, fields, arch, trained, tiny_model_dirs, batch, tmp_path):
    import re

    cfg = method(name, **fields)
    base = snapshot(load(tiny_model_dirs[arch]))
    model, before, after = train_steps(load(tiny_model_dirs[arch]), cfg, batch)
    assert after < before
    for n, p in model.named_parameters():
        if re.search(trained, n):
            assert p.requires_grad, n
        else:
            assert not p.requires_grad and torch.equal(p, base[n]), f"frozen {n} changed"
    assert any(not torch.equal(p, base[n]) for n, p in model.named_parameters() if p.requires_grad)

    out = save_trained(model, cfg, tmp_path)
    assert out == tmp_path / "model"
    meta = json.loads((out / METHOD_FILE).read_text())
    assert meta["method"] == name and meta["model_type"] == arch
    reloaded = load_trained(load(tiny_model_dirs[arch]), out)
    assert torch.equal(eval_logits(reloaded, batch), eval_logits(model, batch))


def test_freeze_saves_only_the_trained_tensors(tiny_model_dirs, batch, tmp_path):
    from safetensors.torch import load_file

    cfg = method("freeze", trainable="top_layers", top_layers=1)
    model, _, _ = train_steps(load(tiny_model_dirs["qwen3"]), cfg, batch)
    out = save_trained(model, cfg, tmp_path)
    saved = load_file(out / TRAINED)
    assert saved and all(".layers.1." in k for k in saved)
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}


def test_full_saves_a_standalone_model(tiny_model_dirs, batch, tmp_path):
    cfg = method("full")
    model, _, _ = train_steps(load(tiny_model_dirs["qwen3_moe"]), cfg, batch)
    out = save_trained(model, cfg, tmp_path)
    standalone = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(eval_logits(standalone, batch), eval_logits(model, batch))


def test_full_trains_the_router_only_when_asked(tiny_model_dirs):
    from thinktune.methods import apply_method

    for train_router in (False, True):
        model = apply_method(load(tiny_model_dirs["qwen3_moe"]), method("full", train_router=train_router))
        assert model.model.layers[0].mlp.gate.weight.requires_grad is train_router


def test_progressive_unfreezing_trains_attention_then_mlp(tiny_model_dirs, batch):
    cfg = method("freeze", trainable="top_layers", top_layers=2, progressive_unfreeze_step=2)
    from thinktune.methods import apply_method

    probe = apply_method(load(tiny_model_dirs["llama"]), cfg)
    names = [n for n, _ in optimizer_parameters(probe, cfg)]
    assert any(".mlp." in n for n in names), "MLP parameters must reach the optimizer up front"
    assert not any(p.requires_grad for n, p in probe.named_parameters() if ".mlp." in n)
    assert count_parameters(probe)[0] == sum(p.numel() for n, p in probe.named_parameters() if ".layers." in n)

    base = snapshot(load(tiny_model_dirs["llama"]))
    after_two, _, _ = train_steps(load(tiny_model_dirs["llama"]), cfg, batch, steps=2)
    mlp = [n for n in base if ".mlp." in n]
    attn = [n for n in base if ".self_attn." in n]
    moved = dict(after_two.named_parameters())
    assert all(torch.equal(moved[n], base[n]) for n in mlp), "MLP moved before its step"
    assert all(not torch.equal(moved[n], base[n]) for n in attn if n.endswith("proj.weight"))
    assert all(moved[n].requires_grad for n in mlp), "MLP not unlocked after step 2"

    after_three, _, _ = train_steps(load(tiny_model_dirs["llama"]), cfg, batch, steps=3)
    moved = dict(after_three.named_parameters())
    assert any(not torch.equal(moved[n], base[n]) for n in mlp), "MLP did not train after unlocking"


def test_progressive_full_keeps_everything_but_the_mlp_first(tiny_model_dirs):
    from thinktune.methods import apply_method

    model = apply_method(load(tiny_model_dirs["qwen3"]), method("full", progressive_unfreeze_step=5))
    for n, p in model.named_parameters():
        assert p.requires_grad is (".mlp." not in n), n


def test_nothing_matching_is_a_config_error(tiny_model_dirs):
    from thinktune.methods import apply_method

    with pytest.raises(ConfigError, match="no parameter of this model matches"):
        apply_method(
            load(tiny_model_dirs["llama"]), method("freeze", trainable="regex", trainable_regex="nothing_here")
        )
