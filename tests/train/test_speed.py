"""Speed levers: packed batches train exactly like padded ones, the loss function reproduces the recipe's plain path
when the levers are off, fused AdamW steps like foreach AdamW, compile and thread settings do what they say."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from peft import LoraConfig, PromptTuningConfig, get_peft_model
from rich.console import Console
from transformers import AutoModelForCausalLM

from thinktune.config import TrainConfig
from thinktune.data.collate import pad_batch
from thinktune.data.render import IGNORE, TokenizedSample
from thinktune.errors import ConfigError
from thinktune.train.engine.loop import TrainLoop
from thinktune.train.engine.losses import combined_loss
from thinktune.train.engine.optim import adamw_kernel, build_optimizer, build_scheduler
from thinktune.train.engine.speed import (
    build_make_batch,
    compile_model,
    configure_threads,
    decoder_layers,
    model_inputs,
    packed_batch,
)
from thinktune.train.objectives.sft import build_sft_loss_fn, chunked_loss_applies


def samples(vocab: int, lengths=(7, 19, 4, 12, 9, 3, 15, 6), seed: int = 0) -> list[TokenizedSample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        prompt = max(1, n // 3)
        out.append(TokenizedSample(ids, [IGNORE] * prompt + ids[prompt:]))
    return out


def lora_model(tiny_model_dirs, arch="llama", seed=0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch])
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    return model.train()


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


# --- batches ------------------------------------------------------------------------------------------------------
def test_packed_batch_keeps_every_token_in_fewer_rows():
    data = samples(500)
    padded, packed = pad_batch(data, 0), packed_batch(data, 0)
    assert all(isinstance(v, torch.Tensor) for v in packed.values())  # TrainLoop calls .to() on every value
    assert packed["input_ids"].shape[1] == max(len(s.input_ids) for s in data)  # rows no longer than the longest
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    assert (
        int(packed["attention_mask"].sum())
        == int(padded["attention_mask"].sum())
        == sum(len(s.input_ids) for s in data)
    )
    trained = lambda b: int((b["labels"][:, 1:] != IGNORE).sum())  # noqa: E731 — what TrainLoop counts
    assert trained(packed) == trained(padded)
    assert (packed["labels"][packed["attention_mask"] == 0] == IGNORE).all()


def test_make_batch_follows_the_config():
    data = samples(500)
    plain = build_make_batch(data, TrainConfig(packing=False), 0)([0, 2, 5])
    assert set(plain) == {"input_ids", "labels", "attention_mask"}
    for key, value in pad_batch([data[0], data[2], data[5]], 0).items():
        assert torch.equal(plain[key], value)
    packed = build_make_batch(data, TrainConfig(packing=True), 0)([0, 2, 5])
    assert "position_ids" in packed
    assert model_inputs(packed).keys() == {"input_ids", "position_ids", "use_cache"}  # never the 2-D mask
    assert model_inputs(plain).keys() == {"input_ids", "attention_mask"}


# --- loss function ------------------------------------------------------------------------------------------------
def recipe_loss_fn(cfg, teacher=None):
    """sft.py's loss_fn before the levers, verbatim."""

    def loss_fn(model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        teacher_logits = None
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return combined_loss(logits, batch, cfg, teacher_logits)

    return loss_fn


@pytest.mark.parametrize(
    "extra",
    [{}, {"label_smoothing": 0.1, "unlikelihood_weight": 0.5}, {"teacher": "t", "distill_alpha": 0.3}],
    ids=["ce", "aux_losses", "distill"],
)
def test_levers_off_reproduce_the_recipe_exactly(tiny_model_dirs, extra):
    model = lora_model(tiny_model_dirs)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]).eval() if "teacher" in extra else None
    cfg = TrainConfig(packing=False, loss_chunk_size=None, **extra)  # the levers off

    batch = pad_batch(samples(model.config.vocab_size), 0)
    want_loss, want_parts = recipe_loss_fn(cfg, teacher)(model, batch)
    want_loss.backward()
    want = grads(model)
    got_loss, got_parts = build_sft_loss_fn(model, cfg, teacher)(model, batch)
    got_loss.backward()
    assert torch.equal(got_loss, want_loss) and got_parts == want_parts
    for name, g in grads(model).items():
        assert torch.equal(g, want[name]), name


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_packed_chunked_loss_equals_padded_full_logits(tiny_model_dirs, arch):
    model = lora_model(tiny_model_dirs, arch)
    data = samples(model.config.vocab_size)
    plain_cfg, fast_cfg = TrainConfig(packing=False, loss_chunk_size=None), TrainConfig(packing=True, loss_chunk_size=5)
    idx = list(range(len(data)))
    want_loss, want_parts = build_sft_loss_fn(model, plain_cfg)(model, build_make_batch(data, plain_cfg, 0)(idx))
    want_loss.backward()
    want = grads(model)
    got_loss, got_parts = build_sft_loss_fn(model, fast_cfg)(model, build_make_batch(data, fast_cfg, 0)(idx))
    got_loss.backward()
    torch.testing.assert_close(got_loss, want_loss, atol=1e-5, rtol=0)
    assert got_parts.keys() == want_parts.keys() == {"ce", "loss"}
    got = grads(model)
    assert got.keys() == want.keys() and got
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=0, msg=name)


def test_packing_is_refused_for_virtual_token_methods(tiny_model_dirs):
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    )
    with pytest.raises(ConfigError, match="train.packing"):
        build_sft_loss_fn(model, TrainConfig(packing=True))
    build_sft_loss_fn(model, TrainConfig(loss_chunk_size=8))  # the chunked head quietly keeps the logits path


def test_chunked_loss_only_for_plain_cross_entropy():
    assert chunked_loss_applies(TrainConfig(loss_chunk_size=8), None)
    assert chunked_loss_applies(TrainConfig(loss_chunk_size=8, label_smoothing=0.1), None)
    assert not chunked_loss_applies(TrainConfig(loss_chunk_size=None), None)
    assert not chunked_loss_applies(TrainConfig(loss_chunk_size=8), teacher=torch.nn.Linear(1, 1))
    assert not chunked_loss_applies(TrainConfig(loss_chunk_size=8, unlikelihood_weight=0.1), None)
    assert not chunked_loss_applies(TrainConfig(loss_chunk_size=8, contrastive_weight=0.1), None)


def tiny_loop(tiny_model_dirs, cfg: TrainConfig, run_dir, steps: int, lengths=None, validate=None):
    """A real TrainLoop (accumulation, clipping, schedule, token counts) on a tiny LoRA model; (loop, params, data)."""
    model = lora_model(tiny_model_dirs)
    data = samples(model.config.vocab_size, **({"lengths": lengths} if lengths else {}))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    acc = Accelerator(cpu=True)
    model, optimizer = acc.prepare(model, optimizer)
    loop = TrainLoop(
        cfg=cfg,
        accelerator=acc,
        model=model,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        n_samples=len(data),
        make_batch=build_make_batch(data, cfg, 0),
        loss_fn=build_sft_loss_fn(model, cfg),
        total_steps=steps,
        run_dir=run_dir,
        console=Console(quiet=True),
        validate=validate,
    )
    return loop, params, data


def train_steps(tiny_model_dirs, tmp_path, **levers) -> list[float]:
    """A few TrainLoop steps on a tiny LoRA model."""
    cfg = TrainConfig(batch_size=4, max_steps=4, learning_rate=1e-2, report_to=[], seed=0, warmup_ratio=0.0, **levers)
    lengths = (7, 19, 4, 12, 9, 3, 15, 6, 11, 5, 17, 8, 2, 14, 10, 13)
    loop, params, data = tiny_loop(
        tiny_model_dirs, cfg, tmp_path / ("fast" if levers["packing"] else "plain"), 4, lengths
    )
    result = loop.run()
    assert result.steps == 4 and result.tokens == sum(len(s.input_ids) for s in data)
    return [p.detach().clone() for _, p in params] + [torch.tensor(result.final_loss)]


def test_train_loop_with_levers_trains_like_the_plain_path(tiny_model_dirs, tmp_path):
    plain = train_steps(tiny_model_dirs, tmp_path, packing=False, loss_chunk_size=None, optimizer="adamw")
    fast = train_steps(tiny_model_dirs, tmp_path, packing=True, loss_chunk_size=7, optimizer="adamw_fused")
    for a, b in zip(plain, fast, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


# --- optimizer, compile, threads ----------------------------------------------------------------------------------
def test_adamw_fused_is_fused_on_cpu_and_steps_like_foreach():
    torch.manual_seed(0)
    weights = [torch.randn(8, 4), torch.randn(4)]
    results = {}
    for name in ("adamw", "adamw_fused"):
        params = [(f"p{i}", torch.nn.Parameter(w.clone())) for i, w in enumerate(weights)]
        opt = build_optimizer(params, TrainConfig(optimizer=name, weight_decay=0.1, learning_rate=1e-2))
        assert all(g.get("fused" if name == "adamw_fused" else "foreach") for g in opt.param_groups)
        for step in range(3):
            for i, (_, p) in enumerate(params):
                p.grad = torch.full_like(p, 0.1 * (step + 1) + i)
            opt.step()
        results[name] = [p.detach() for _, p in params]
    for a, b in zip(results["adamw"], results["adamw_fused"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_adamw_fused_falls_back_to_foreach_where_unsupported():
    assert adamw_kernel([torch.nn.Parameter(torch.zeros(2))], "adamw_fused") == {"fused": True}
    assert adamw_kernel([torch.nn.Parameter(torch.zeros(2, device="meta"))], "adamw_fused") == {"foreach": True}
    assert adamw_kernel([torch.nn.Parameter(torch.zeros(2))], "adamw") == {"foreach": True}


def test_compile_model_compiles_each_decoder_layer_in_place(tiny_model_dirs):
    model = lora_model(tiny_model_dirs, "qwen3")
    names = [n for n, _ in model.named_parameters()]
    assert compile_model(model, TrainConfig()) == 0
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(model))
    assert compile_model(model, TrainConfig(torch_compile=True)) == model.config.num_hidden_layers
    assert all(layer._compiled_call_impl is not None for layer in decoder_layers(model))
    assert [n for n, _ in model.named_parameters()] == names  # checkpoints and EWC names unchanged


def test_configure_threads():
    before = torch.get_num_threads()
    try:
        assert configure_threads(None) == before
        assert configure_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


# --- CUDA-only levers on a CPU machine -----------------------------------------------------------------------------
def test_cuda_only_levers_fail_in_one_line_before_loading(tiny_model_dirs, tmp_path, monkeypatch):
    from thinktune.config import load_config
    from thinktune.errors import EnvironmentProblem
    from thinktune.models.loading import check_attention
    from thinktune.train import run as run_module
    from thinktune.train import sft

    def no_load(*a, **k):
        raise AssertionError("weights were loaded before the check")

    monkeypatch.setattr(run_module, "load_pretrained", no_load)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the message a machine without CUDA shows
    cfg = load_config(
        None, [f"model.name_or_path={tiny_model_dirs['llama']}", f"output_dir={tmp_path}", "train.liger_kernels=true"]
    )
    with pytest.raises(EnvironmentProblem, match="liger_kernels needs a CUDA GPU"):
        sft.run_sft(cfg, Console(quiet=True))
    with pytest.raises(EnvironmentProblem, match="flash_attention_2 needs a CUDA GPU"):
        check_attention("flash_attention_2")
    check_attention("sdpa")  # no-op


def test_attn_implementation_reaches_the_model(tiny_model_dirs):
    from thinktune.config import ModelConfig
    from thinktune.models import load_pretrained

    model, _, _ = load_pretrained(ModelConfig(name_or_path=str(tiny_model_dirs["llama"]), attn_implementation="eager"))
    assert model.config._attn_implementation == "eager"


def test_auto_levers_are_decided_per_model_and_method(tiny_model_dirs):
    """The defaults: packing and the chunked head wherever they are exact, off where they cannot apply; a value the
    user gives is kept (and refused where it cannot apply)."""
    from thinktune.train.objectives.sft import AUTO_CHUNK, resolve_levers

    model = lora_model(tiny_model_dirs)
    auto = resolve_levers(TrainConfig(), model)
    assert auto.packing is True and auto.loss_chunk_size == AUTO_CHUNK and auto.optimizer == "adamw_fused"
    assert resolve_levers(TrainConfig(unlikelihood_weight=0.1), model).loss_chunk_size is None  # needs full logits
    assert resolve_levers(TrainConfig(packing=False, loss_chunk_size=None), model).packing is False
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
    prompt = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert resolve_levers(TrainConfig(), prompt).packing is False  # virtual tokens: packing cannot apply
    with pytest.raises(ConfigError, match="packing does not work"):
        build_sft_loss_fn(prompt, TrainConfig(packing=True))
    with pytest.raises(ValueError, match="positive"):
        TrainConfig(loss_chunk_size=0)
