"""A byte-level BPE tokenizer as GGUF metadata (llama.cpp's `gpt2` tokenizer model).

llama.cpp reads the vocabulary, merges and token types from the file, and picks its pre-tokenizer split (the regex
that cuts text into words before BPE) by the name in `tokenizer.ggml.pre`. We recognise the split from
`tokenizer.json`; an unknown one is written as `default` and reported, since llama.cpp then splits differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import gguf
from transformers import PreTrainedTokenizerBase

from thinktune.errors import UserError

# llama.cpp pre-tokenizer names for the splits transformers' byte-level tokenizers use.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_NAMES = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


@dataclass
class GgufVocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int] = field(default_factory=dict)  # bos / eos / pad / unk / eot
    add_bos: bool = False
    chat_template: str | None = None
    notes: list[str] = field(default_factory=list)

    def write(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_token_merges(self.merges)
        adders = {
            "bos": writer.add_bos_token_id,
            "eos": writer.add_eos_token_id,
            "pad": writer.add_pad_token_id,
            "unk": writer.add_unk_token_id,
            "eot": writer.add_eot_token_id,
        }
        for name, token_id in self.special_ids.items():
            adders[name](token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(False)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def gguf_vocab(tokenizer: PreTrainedTokenizerBase, vocab_size: int, bos_fallback: int | None = None) -> GgufVocab:
    """Tokens in id order (padded to the embedding's rows), token types, merges, pre-tokenizer name, special ids."""
    spec = _tokenizer_json(tokenizer)
    model = spec.get("model", {})
    if model.get("type") != "BPE" or not _is_byte_level(spec):
        raise UserError(
            "GGUF export supports byte-level BPE tokenizers (GPT-2/Llama-3/Qwen style); "
            f"this one is {model.get('type', 'unknown')} without a ByteLevel pre-tokenizer"
        )
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if len(by_id) > vocab_size:
        raise UserError(f"tokenizer has {len(by_id)} tokens but the model's embedding only {vocab_size} rows")
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # the embedding has more rows than the tokenizer has tokens (padding for speed)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre, notes = _pre_tokenizer_name(spec.get("pre_tokenizer"))
    vocab = GgufVocab(tokens, [int(t) for t in types], merges, pre, notes=notes)
    vocab.special_ids = _special_ids(tokenizer, bos_fallback)
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    vocab.add_bos = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
    template = tokenizer.chat_template
    vocab.chat_template = template.get("default") if isinstance(template, dict) else template
    return vocab


def _tokenizer_json(tokenizer: PreTrainedTokenizerBase) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError("GGUF export needs a fast tokenizer (tokenizer.json); this model only has a slow one")
    return json.loads(backend.to_str())


def _is_byte_level(spec: dict) -> bool:
    def kinds(node: dict | None) -> list[str]:
        if not node:
            return []
        return [k for child in node.get("pretokenizers", node.get("decoders", [])) for k in kinds(child)] + [
            node.get("type", "")
        ]

    return "ByteLevel" in kinds(spec.get("pre_tokenizer")) + kinds(spec.get("decoder"))


def _pre_tokenizer_name(pre: dict | None) -> tuple[str, list[str]]:
    """llama.cpp's name for this split: ByteLevel's own regex is GPT-2's; a Split regex is looked up by value."""
    if pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt2", []
    steps = pre.get("pretokenizers", []) if pre else []
    for step in steps:
        pattern = step.get("pattern", {}).get("Regex") if step.get("type") == "Split" else None
        if pattern in SPLIT_NAMES:
            return SPLIT_NAMES[pattern], []
    return "default", [
        "pre-tokenizer split not recognised; written as 'default', so llama.cpp may cut words differently"
    ]


def _special_ids(tokenizer: PreTrainedTokenizerBase, bos_fallback: int | None) -> dict[str, int]:
    ids = {
        "bos": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else bos_fallback,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
        "unk": tokenizer.unk_token_id,
    }
    im_end = tokenizer.get_vocab().get("<|im_end|>")
    if im_end is not None:
        ids["eot"] = im_end  # ChatML's end of turn: llama.cpp stops generation on it
    return {k: v for k, v in ids.items() if v is not None}
