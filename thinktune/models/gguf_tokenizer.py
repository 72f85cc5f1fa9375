"""Control tokens a GGUF declares but transformers' GGUF tokenizer conversion loses.

DeepSeek-R1-Distill's GGUF marks `<｜User｜>` and `<｜Assistant｜>` as control tokens (ids 151644/151645), but
transformers 5 stores them in byte-level form (`<ï½ľUserï½ľ>`) and does not register them as added tokens: the chat
template's `<｜Assistant｜>` is then encoded as five ordinary pieces, the model never sees the token it was trained
with, and `>` merges with the answer's first character. It also appends readable copies of BOS/EOS after the last
GGUF id, where the model has no embedding row, and its BOS post-processor adds that out-of-range id.
`restore_control_tokens` puts every control and user-defined token of the GGUF back under its own id, drops tokens past
the GGUF's vocabulary and points the post-processor at the real ids, as the model's own `tokenizer.json` has it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types


def gguf_special_tokens(gguf_path: str | Path) -> tuple[dict[int, tuple[str, bool]], int]:
    """id → (text, is_control) for the control and user-defined tokens of a GGUF file, and its token count."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    tokens, types = reader.fields.get("tokenizer.ggml.tokens"), reader.fields.get("tokenizer.ggml.token_type")
    if tokens is None or types is None:
        return {}, 0
    out = {}
    for i, (t, ty) in enumerate(zip(tokens.data, types.data, strict=True)):
        kind = int(types.parts[ty][0])
        if kind in (CONTROL, USER_DEFINED):
            out[i] = (bytes(tokens.parts[t]).decode("utf-8", errors="replace"), kind == CONTROL)
    return out, len(tokens.data)


def restore_control_tokens(tokenizer: PreTrainedTokenizerBase, gguf_path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer with the GGUF's control tokens under their own ids (the same tokenizer when none is missing)."""
    vocab = tokenizer.get_vocab()
    special, count = gguf_special_tokens(gguf_path)
    missing = {i: v for i, v in special.items() if vocab.get(v[0]) != i and i < len(tokenizer)}
    if not missing and len(tokenizer) <= count:
        return tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        path = Path(tmp) / "tokenizer.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        model_vocab = data["model"]["vocab"]
        by_id = {v: k for k, v in model_vocab.items()}
        added = {a["id"]: a for a in data.get("added_tokens", [])}
        for i, (text, control) in missing.items():
            model_vocab.pop(by_id.get(i), None)
            model_vocab[text] = i
            added[i] = {
                "id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": control,
            }  # fmt: skip
        for i in [i for i in added if i >= count]:
            text = added.pop(i)["content"]
            if model_vocab.get(text) == i:
                del model_vocab[text]
        data["added_tokens"] = sorted(added.values(), key=lambda a: a["id"])
        ids = {**model_vocab, **{a["content"]: i for i, a in added.items()}}
        _point_post_processor(data.get("post_processor"), ids)
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        restored = AutoTokenizer.from_pretrained(tmp)
    restored.chat_template = tokenizer.chat_template
    return restored


def _point_post_processor(processor: dict | None, ids: dict[str, int]) -> None:
    """TemplateProcessing's special tokens (BOS) get the ids their text has in the restored vocabulary."""
    if not processor:
        return
    for child in processor.get("processors", []):
        _point_post_processor(child, ids)
    for entry in (processor.get("special_tokens") or {}).values():
        entry["ids"] = [ids.get(token, i) for token, i in zip(entry["tokens"], entry["ids"], strict=True)]
