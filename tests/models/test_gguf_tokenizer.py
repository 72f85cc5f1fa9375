"""GGUF tokenizers keep their control tokens: the real DeepSeek-R1-Distill-Qwen tokenizer (../shared/templates)."""

from __future__ import annotations

from pathlib import Path

from thinktune.data.render import render_prompt
from thinktune.models.gguf_tokenizer import gguf_special_tokens
from thinktune.models.loading import ModelSource, load_tokenizer

TEMPLATES = Path(__file__).parents[2].parent / "shared" / "templates"
R1_GGUF = "deepseek-r1-distill-qwen.vocab.gguf"


def test_r1_distill_gguf_tokenizer_encodes_its_chat_tokens_as_single_ids():
    assert (TEMPLATES / R1_GGUF).is_file(), "CI has ../shared beside the checkout"
    specials, count = gguf_special_tokens(TEMPLATES / R1_GGUF)
    assert count == 152064
    assert specials[151644] == ("<｜User｜>", True) and specials[151645] == ("<｜Assistant｜>", True)
    tok = load_tokenizer(ModelSource(TEMPLATES, R1_GGUF))
    for i, (text, _) in specials.items():
        assert tok(text, add_special_tokens=False)["input_ids"] == [i], text
    assert (tok.bos_token_id, tok.eos_token_id) == (151646, 151643)  # the ids the GGUF (and the HF model) use
    prompt = render_prompt(tok, [{"role": "user", "content": "Hi", "reasoning": None}])
    ids = tok(prompt + '{"a": 1}', add_special_tokens=False)["input_ids"]
    # `<｜Assistant｜>` is one token, so the answer's first character cannot merge into the prompt
    assert ids[: len(tok(prompt, add_special_tokens=False)["input_ids"])][-1] == 151645


def test_r1_distill_gguf_tokenizer_adds_the_real_bos_and_nothing_past_the_vocabulary():
    """transformers' GGUF conversion appends BOS/EOS copies after id 152063 and makes encode() prepend one of them:
    an id the model has no embedding row for."""
    tok = load_tokenizer(ModelSource(TEMPLATES, R1_GGUF))
    assert len(tok) == 152064
    assert tok("a")["input_ids"] == [151646, 64]
    assert max(tok.get_vocab().values()) == 152063
