"""A byte-level BPE tokenizer as GGUF metadata (llama.cpp's `gpt2` tokenizer model).

llama.cpp reads the vocabulary, merges and token types from the file, and picks its pre-tokenizer (the regex that cuts
text into words before BPE) by the name in `tokenizer.ggml.pre`; a name it does not know makes it refuse the file. The
name is found as llama.cpp's own converter finds it: the tokenizer encodes a fixed test string and the SHA-256 of the
id list is looked up (`KNOWN_CHECKSUMS`, values from llama.cpp's `convert_hf_to_gguf_update.py`). A tokenizer not in
that table (a fine-tune's own tokenizer, the tests' tiny one) is identified by its pre-tokenizer's structure in
`tokenizer.json`, the split llama.cpp then applies; one matching neither is refused, naming its checksum.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from hashlib import sha256

import gguf
from transformers import PreTrainedTokenizerBase

from thinktune.errors import UserError

# llama.cpp's converter encodes this string with the tokenizer (special tokens included, as `tokenizer.encode` does)
# and hashes `str(ids)`: the ids differ wherever two pre-tokenizers cut the string differently.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫\ufe0f (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 "
    "?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? "
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? "
    "We'Ve a'lL"
)
KNOWN_CHECKSUMS = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 … Qwen3
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3-Embedding
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",  # R1-Distill-Qwen
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # GPT-2
}

# The Split regexes of transformers' byte-level tokenizers, by llama.cpp name (used when the checksum is unknown).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_NAMES = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}
SUPPORTED = "Llama 3 (llama-bpe), Qwen2/Qwen3 (qwen2), DeepSeek-R1-Distill-Qwen, SmolLM/SmolLM2 (smollm), GPT-2 (gpt-2)"


@dataclass
class GgufVocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int] = field(default_factory=dict)  # bos / eos / pad / unk / eot
    add_bos: bool = False
    chat_template: str | None = None
    identified_by: str = "checksum"

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
    pre, identified_by = pre_tokenizer_name(tokenizer, spec.get("pre_tokenizer"))
    vocab = GgufVocab(tokens, [int(t) for t in types], merges, pre, identified_by=identified_by)
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


def check_checksum(tokenizer: PreTrainedTokenizerBase) -> str:
    """The SHA-256 llama.cpp's converter computes for this tokenizer."""
    return sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()


def pre_tokenizer_name(tokenizer: PreTrainedTokenizerBase, pre: dict | None) -> tuple[str, str]:
    """(llama.cpp pre-tokenizer name, how it was identified: `checksum` or `split`)."""
    checksum = check_checksum(tokenizer)
    if checksum in KNOWN_CHECKSUMS:
        return KNOWN_CHECKSUMS[checksum], "checksum"
    name = split_name(pre)
    if name is None:
        raise UserError(
            f"GGUF export: llama.cpp would not know this tokenizer's pre-tokenizer (checksum {checksum[:16]}…, "
            f"pre_tokenizer {json.dumps(pre)[:160]}); identified: {SUPPORTED}"
        )
    return name, "split"


def split_name(pre: dict | None) -> str | None:
    """llama.cpp's name for a pre-tokenizer by its structure: ByteLevel's own regex is GPT-2's; SmolLM puts single
    digits first; a Split regex is looked up by value."""
    if not pre:
        return None
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    byte_level = steps[-1] if kinds and kinds[-1] == "ByteLevel" else None
    if byte_level is None:
        return None
    if kinds == ["ByteLevel"] and byte_level.get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level.get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not byte_level.get("use_regex", True):
        return SPLIT_NAMES.get(steps[0].get("pattern", {}).get("Regex"))
    return None


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
