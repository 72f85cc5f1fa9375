"""llama.cpp's pre-tokenizer name (`tokenizer.ggml.pre`) for real tokenizers, found as its converter finds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_tokenizer
from thinktune.errors import UserError
from thinktune.export.gguf_vocab import _LLAMA3_SPLIT, _QWEN2_SPLIT, gguf_vocab, pre_tokenizer_name, split_name
from thinktune.models.loading import ModelSource, load_tokenizer, resolve_model

TEMPLATES = Path(__file__).parents[2].parent / "shared" / "templates"


def split(regex: str) -> dict:
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ],
    }


@pytest.mark.parametrize(
    ("pre", "name"),
    [
        ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt-2"),
        (split(_QWEN2_SPLIT), "qwen2"),
        (split(_LLAMA3_SPLIT), "llama-bpe"),
        (
            {
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": True}, {"type": "ByteLevel"}],
            },
            "smollm",
        ),
        (split(r"\p{N}+|\s+"), None),
        ({"type": "Metaspace"}, None),
        (None, None),
    ],
)
def test_names_by_structure(pre, name):
    assert split_name(pre) == name


def test_real_tokenizers_are_identified_by_llama_cpp_checksum():
    smol = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    assert pre_tokenizer_name(smol, None) == ("smollm", "checksum")  # not `gpt2`, which llama.cpp refuses
    r1 = load_tokenizer(ModelSource(TEMPLATES, "deepseek-r1-distill-qwen.vocab.gguf"))
    assert pre_tokenizer_name(r1, None) == ("deepseek-r1-qwen", "checksum")  # its BOS is part of the checksum
    vocab = gguf_vocab(r1, 152064)
    assert (vocab.pre, vocab.add_bos, vocab.special_ids["bos"]) == ("deepseek-r1-qwen", True, 151646)


def test_an_unknown_tokenizer_is_named_by_its_split_or_refused():
    tiny = build_tiny_tokenizer()
    vocab = gguf_vocab(tiny, len(tiny))
    assert (vocab.pre, vocab.identified_by) == ("gpt-2", "split")
    with pytest.raises(UserError, match=r"llama.cpp would not know this tokenizer's pre-tokenizer \(checksum"):
        pre_tokenizer_name(tiny, split(r"\p{N}+|\s+"))
