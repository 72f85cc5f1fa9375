from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from tests.tiny_models import TINY_ARCHS, build_tiny_model, build_tiny_tokenizer

ROUNDTRIP = "<think>\n3 + 4 = 7\n</think>\n\nThe answer is \\boxed{7}."
CONVO = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 3 + 4?"},
    {"role": "assistant", "content": ROUNDTRIP},
]


def _ids(tok, messages, **kw):
    text = tok.apply_chat_template(messages, tokenize=False, **kw)
    return text, torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])


def test_tokenizer_basics(tiny_tokenizer):
    tok = tiny_tokenizer
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert 400 <= len(tok) <= 1000
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    assert tok.bos_token is None
    ids = tok(ROUNDTRIP)["input_ids"]
    assert tok.decode(ids) == ROUNDTRIP
    weird = "naïve café 日本語 \t tabs  and  spaces ∑"
    assert tok.decode(tok(weird)["input_ids"]) == weird
    for special in ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]:
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    enc = tok("hello <|im_end|>", return_offsets_mapping=True)
    assert len(enc["offset_mapping"]) == len(enc["input_ids"])
    text = tok.apply_chat_template(CONVO[:2], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tokenizer_deterministic():
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()


def test_tiny_model_roundtrip(tiny_model_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.decode(tok(ROUNDTRIP)["input_ids"]) == ROUNDTRIP
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert model.dtype == torch.float32
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id

    text, ids = _ids(tok, CONVO)
    assert text.startswith("<|im_start|>system\n")
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()

    # Reload from disk gives identical logits.
    model2 = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        assert torch.equal(model2(ids).logits, logits)

    # Rebuilding with the same seed is deterministic.
    arch = model.config.model_type
    assert arch in TINY_ARCHS
    rebuilt = build_tiny_model(arch, tmp_path / arch, seed=0)
    model3 = AutoModelForCausalLM.from_pretrained(rebuilt).eval()
    with torch.no_grad():
        assert torch.equal(model3(ids).logits, logits)
