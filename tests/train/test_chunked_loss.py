"""Chunked LM-head loss: same loss and gradients as `model(**batch).loss`, on every tiny architecture, with LoRA and
full fine-tuning, with less memory (measured: peak tensor bytes tracked by torch's MemTracker)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

from thinktune.errors import ConfigError
from thinktune.train.engine.chunked_loss import hidden_and_head, lm_loss_from_hidden
from thinktune.train.engine.losses import causal_lm_loss

IGNORE = -100


def padded_batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Three rows: an untrained prompt, then a trained answer; rows 1 and 2 right-padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 14), generator=g)
    labels = ids.clone()
    labels[:, :5] = IGNORE
    mask = torch.ones_like(ids)
    for row, end in ((1, 10), (2, 7)):
        ids[row, end:], labels[row, end:], mask[row, end:] = 0, IGNORE, 0
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def load(tiny_model_dirs, arch: str, lora: bool, target_modules="all-linear"):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch])
    if lora:
        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=target_modules, bias="none")
        )
        torch.manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: give A a gradient to compare
                p.data.normal_(0, 0.1)
    return model.train()


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def reference(model, batch):
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), grads(model)


def chunked(model, batch, chunk_size: int, label_smoothing: float = 0.0):
    parts = hidden_and_head(model)
    hidden = parts.hidden_states(model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    loss, n = lm_loss_from_hidden(hidden, parts.lm_head, batch["labels"], chunk_size, label_smoothing)
    loss.backward()
    return loss.detach(), n, grads(model)


def assert_same(loss, g, ref_loss, ref_g):
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=0)
    assert g.keys() == ref_g.keys() and g
    for name in ref_g:
        torch.testing.assert_close(g[name], ref_g[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("chunk_size", [3, 1000], ids=["many_chunks", "one_chunk"])
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_loss_and_gradients_equal_model_loss(tiny_model_dirs, arch, lora, chunk_size):
    model = load(tiny_model_dirs, arch, lora)
    batch = padded_batch(model.config.vocab_size)
    ref_loss, ref_grads = reference(model, batch)
    loss, n, g = chunked(model, batch, chunk_size)
    assert n == int((batch["labels"][:, 1:] != IGNORE).sum())
    assert_same(loss, g, ref_loss, ref_grads)
    if not lora:  # the head's weight gets its gradient through the fused function
        assert any("lm_head" in name for name in g)


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_moe_architectures_match_too(tiny_model_dirs, arch):
    model = load(tiny_model_dirs, arch, lora=False)
    batch = padded_batch(model.config.vocab_size, seed=3)
    ref_loss, ref_grads = reference(model, batch)
    loss, _, g = chunked(model, batch, 4)
    assert_same(loss, g, ref_loss, ref_grads)


def test_label_smoothing_matches_cross_entropy(tiny_model_dirs):
    model = load(tiny_model_dirs, "llama", lora=False)
    batch = padded_batch(model.config.vocab_size, seed=5)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref_loss = causal_lm_loss(logits, batch["labels"], label_smoothing=0.1)
    ref_loss.backward()
    ref_grads = grads(model)
    loss, _, g = chunked(model, batch, 5, label_smoothing=0.1)
    assert_same(loss, g, ref_loss.detach(), ref_grads)


def test_a_wrapped_head_goes_through_checkpointed_chunks(tiny_model_dirs):
    """LoRA on lm_head: the head is not a plain Linear, so chunks run under torch.utils.checkpoint."""
    model = load(tiny_model_dirs, "llama", lora=True, target_modules=["q_proj", "v_proj", "lm_head"])
    parts = hidden_and_head(model)
    assert type(parts.lm_head) is not torch.nn.Linear
    batch = padded_batch(model.config.vocab_size, seed=7)
    ref_loss, ref_grads = reference(model, batch)
    loss, _, g = chunked(model, batch, 4)
    assert_same(loss, g, ref_loss, ref_grads)
    assert any("lm_head.lora_A" in name for name in g)


def test_no_trained_tokens_gives_zero_that_backpropagates(tiny_model_dirs):
    model = load(tiny_model_dirs, "llama", lora=True)
    batch = padded_batch(model.config.vocab_size)
    batch["labels"][:] = IGNORE
    loss, n, g = chunked(model, batch, 4)
    assert n == 0 and float(loss) == 0.0
    assert all(float(v.abs().sum()) == 0 for v in g.values())


def test_without_grad_it_only_scores(tiny_model_dirs):
    model = load(tiny_model_dirs, "qwen3", lora=False).eval()
    batch = padded_batch(model.config.vocab_size)
    with torch.no_grad():
        parts = hidden_and_head(model)
        hidden = parts.hidden_states(model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss, _ = lm_loss_from_hidden(hidden, parts.lm_head, batch["labels"], 4)
        torch.testing.assert_close(loss, model(**batch).loss, atol=1e-5, rtol=0)


def test_prompt_learning_keeps_the_logits_path(tiny_model_dirs):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
    peft_model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert hidden_and_head(peft_model) is None


def test_models_that_transform_their_logits_are_refused(tiny_model_dirs):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
    model.config.final_logit_softcapping = 30.0  # as Gemma 2/3 configs say
    with pytest.raises(ConfigError, match="transforms its logits"):
        hidden_and_head(model)


def test_a_logit_transform_the_config_does_not_name_is_caught_on_the_first_call(tiny_model_dirs):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
    forward = model.forward

    def scaled(*args, logits_to_keep=0, **kwargs):
        out = forward(*args, logits_to_keep=logits_to_keep, **kwargs)
        out.logits = out.logits * 0.5
        return out

    model.forward = scaled
    batch = padded_batch(model.config.vocab_size)
    with pytest.raises(ConfigError, match="transforms its logits"):
        hidden_and_head(model).hidden_states(model, input_ids=batch["input_ids"])


def peak_bytes(fn) -> int:
    """Peak bytes of live tensors while `fn` runs (forward + backward), tracked allocation by allocation."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    with tracker:
        fn()
    return int(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])


def test_peak_memory_is_lower_with_a_large_vocabulary():
    """4 × 256 positions, half trained, vocabulary 32,768: full logits are 4·256·32768·4 B = 128 MiB per copy."""
    torch.manual_seed(0)
    batch, length, hidden_size, vocab = 4, 256, 32, 32768
    head = torch.nn.Linear(hidden_size, vocab, bias=False)
    hidden = torch.randn(batch, length, hidden_size)
    labels = torch.randint(0, vocab, (batch, length))
    labels[:, : length // 2] = IGNORE
    results = {}

    def full():
        h = hidden.clone().requires_grad_()
        loss = causal_lm_loss(head(h), labels)
        loss.backward()
        results["full"] = (loss.detach(), h.grad)

    def chunk():
        h = hidden.clone().requires_grad_()
        loss, _ = lm_loss_from_hidden(h, head, labels, 128)
        loss.backward()
        results["chunked"] = (loss.detach(), h.grad)

    full_peak, chunked_peak = peak_bytes(full), peak_bytes(chunk)
    torch.testing.assert_close(results["chunked"][0], results["full"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(results["chunked"][1], results["full"][1], atol=1e-6, rtol=0)
    logits_bytes = batch * length * vocab * 4
    assert full_peak > logits_bytes  # the plain path holds at least the full logits
    chunk_logits = 128 * vocab * 4
    assert chunked_peak < 3 * chunk_logits + 2 * head.weight.numel() * 4  # a chunk's logits (+ temporaries)
    assert chunked_peak < full_peak / 4


def test_gradient_checkpointed_chunks_do_not_keep_logits_for_backward():
    """Saved-for-backward tensors, measured with saved_tensors_hooks: the plain path keeps [N × V] rows, the
    checkpointed generic path keeps only its inputs."""
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(16, 4096, bias=False))  # not a plain Linear: generic path
    hidden = torch.randn(2, 64, 16, requires_grad=True)
    labels = torch.randint(0, 4096, (2, 64))

    def largest_saved(fn) -> int:
        sizes = []

        def pack(t):
            sizes.append(t.untyped_storage().nbytes())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return max(sizes)

    plain = largest_saved(lambda: causal_lm_loss(head(hidden), labels))
    chunk = largest_saved(lambda: lm_loss_from_hidden(hidden, head, labels, 16)[0])
    assert plain >= 2 * 63 * 4096 * 4  # all trained rows' logits (float32)
    assert chunk <= max(hidden.numel() * 4, 2 * 63 * 16 * 4)  # hidden rows, never logits


def test_chunk_size_must_be_positive():
    with pytest.raises(ValueError, match="chunk_size"):
        lm_loss_from_hidden(torch.zeros(1, 2, 4), torch.nn.Linear(4, 8), torch.zeros(1, 2, dtype=torch.long), 0)


def test_fused_function_matches_autograd_with_bias():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50)
    hidden = torch.randn(2, 9, 8, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9))
    labels[0, :3] = IGNORE
    ref = F.cross_entropy(head(hidden)[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1), ignore_index=IGNORE)
    ref.backward()
    ref_grads = [hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    hidden.grad = head.weight.grad = head.bias.grad = None
    loss, _ = lm_loss_from_hidden(hidden, head, labels, 4)
    (loss * 3).backward()  # grad_output ≠ 1 scales every gradient
    torch.testing.assert_close(loss, ref.detach(), atol=1e-6, rtol=0)
    for got, want in zip([hidden.grad, head.weight.grad, head.bias.grad], ref_grads, strict=True):
        torch.testing.assert_close(got, 3 * want, atol=1e-6, rtol=0)
