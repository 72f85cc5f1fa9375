"""GGUF export for llama.cpp and Ollama: Llama, Qwen2, Qwen3 and Qwen3-MoE architectures, f16 / bf16 / q8_0 / q4_0.

    thinktune export --run-dir runs/quickstart --format gguf --gguf-type q8_0 -o exports/gguf

Out: `<name>-<type>.gguf` and an Ollama `Modelfile`. Tensors get llama.cpp's names (`token_embd`, `blk.N.attn_q`,
…, `output`) from the gguf package's own name map; metadata follows llama.cpp's converter (`convert_hf_to_gguf.py`).
Verified: the file is read back with `gguf.GGUFReader` (tensor count and types), then loaded by transformers
(`from_pretrained(dir, gguf_file=…)`), whose tokenizer must encode the test prompts like the source tokenizer and whose
greedy output is compared with the merged model's.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from transformers import PreTrainedModel

from thinktune.errors import UserError
from thinktune.export.gguf_vocab import gguf_vocab
from thinktune.export.modelfile import write_modelfile
from thinktune.export.parity import greedy_agreement, max_abs_diff, top1_agreement, torch_greedy, torch_logits
from thinktune.export.source import ExportOptions, ExportSource, stop_ids
from thinktune.runs import ADAPTER, MODEL


@dataclass(frozen=True)
class GgufArch:
    arch: gguf.MODEL_ARCH
    # llama.cpp's Llama graph applies RoPE to adjacent pairs, transformers' to the two halves of each head; its
    # converter permutes the Q/K rows to match, and transformers' GGUF loader undoes it. Qwen uses NeoX RoPE: no change.
    permute_qk: bool


ARCHS: dict[str, GgufArch] = {
    "llama": GgufArch(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "qwen2": GgufArch(gguf.MODEL_ARCH.QWEN2, permute_qk=False),
    "qwen3": GgufArch(gguf.MODEL_ARCH.QWEN3, permute_qk=False),
    "qwen3_moe": GgufArch(gguf.MODEL_ARCH.QWEN3MOE, permute_qk=False),
}

# `export.gguf_type` offers f16 / bf16 / q8_0 / q4_0. f32 is lossless (it checks the layout); q4_1 re-exports a model
# that came from a Q4_1 GGUF, like the bundled SmolLM2, without moving its weights off their grid.
TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1}
FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
}


def gguf_arch(model_type: str) -> GgufArch:
    if model_type not in ARCHS:
        raise UserError(f"GGUF export does not support the '{model_type}' architecture (supported: {', '.join(ARCHS)})")
    return ARCHS[model_type]


def permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: per head, interleave the two rotary halves."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def tensor_type(gguf_name: str, data: np.ndarray, target: Q, has_output: bool) -> Q:
    """Norms and biases stay F32. At 4 bits the output projection (or the tied embedding acting as it) gets Q8_0, as
    llama.cpp keeps it above 4 bits; rows that do not split into 32-value blocks fall back to F16, as in llama.cpp."""
    if data.ndim < 2:
        return Q.F32
    is_output = gguf_name == "output.weight" or (gguf_name == "token_embd.weight" and not has_output)
    if target in (Q.Q4_0, Q.Q4_1) and is_output:
        target = Q.Q8_0
    block = gguf.GGML_QUANT_SIZES[target][0]
    return target if data.shape[-1] % block == 0 else Q.F16


def gguf_tensors(model: PreTrainedModel, target: Q):
    """(gguf name, data, type) for every tensor, in the model's order."""
    config = model.config
    arch = gguf_arch(config.model_type)
    names = gguf.get_tensor_name_map(arch.arch, config.num_hidden_layers)
    state = model.state_dict()
    tied = getattr(config, "tie_word_embeddings", False)
    has_output = "lm_head.weight" in state and not tied
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reads token_embd when output is absent
        data = tensor.detach().to(torch.float32).cpu().numpy()
        for stem, suffix, part in _expert_parts(hf_name, data):
            mapped = names.get_name(stem)
            if mapped is None:
                raise UserError(f"GGUF export: tensor '{hf_name}' has no llama.cpp name for {config.model_type}")
            if arch.permute_qk and mapped.endswith((".attn_q", ".attn_k")):  # weights and (attention_bias) biases
                heads = config.num_attention_heads if mapped.endswith("attn_q") else config.num_key_value_heads
                part = permute_qk(part, heads)
            name = f"{mapped}.{suffix}"
            yield name, part, tensor_type(name, part, target, has_output)


def _expert_parts(hf_name: str, data: np.ndarray):
    """(name stem, suffix, data) for one tensor. transformers 5 stores a MoE layer's experts fused: `gate_up_proj`
    (experts, 2·ffn, hidden) with the gate rows first, and `down_proj` (experts, hidden, ffn); llama.cpp wants them
    stacked per projection (`ffn_gate_exps`, `ffn_up_exps`, `ffn_down_exps`), which is the same layout split in two."""
    stem, _, suffix = hf_name.rpartition(".")
    if stem.endswith(".experts") and suffix == "gate_up_proj":
        gate, up = np.split(data, 2, axis=1)
        return [(f"{stem}.gate_proj", "weight", gate), (f"{stem}.up_proj", "weight", up)]
    if stem.endswith(".experts") and suffix == "down_proj":
        return [(f"{stem}.down_proj", "weight", data)]
    return [(stem, suffix, data)]


def write_gguf(model: PreTrainedModel, tokenizer, path: Path, gguf_type: str, name: str) -> dict[str, Any]:
    """Write the GGUF file; returns what was written (type counts, tokenizer notes) for the verification record."""
    if gguf_type not in TYPES:
        raise UserError(f"unknown GGUF type '{gguf_type}'; choose one of: {', '.join(TYPES)}")
    config = model.config
    arch = gguf_arch(config.model_type)
    _check_moe(config)
    vocab = gguf_vocab(tokenizer, config.vocab_size, bos_fallback=config.bos_token_id)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch.arch])
    _write_hparams(writer, config, name, gguf_type)
    vocab.write(writer)
    types: Counter[str] = Counter()
    for tensor_name, data, qtype in gguf_tensors(model, TYPES[gguf_type]):
        writer.add_tensor(tensor_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        types[qtype.name] += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"tensor_types": dict(types), "vocab": vocab}


def _write_hparams(writer: gguf.GGUFWriter, config, name: str, gguf_type: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_file_type(FILE_TYPES[gguf_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(_rope(config)["rope_theta"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    if config.model_type == "qwen3_moe":
        writer.add_expert_count(config.num_experts)
        writer.add_expert_used_count(config.num_experts_per_tok)
        writer.add_expert_feed_forward_length(config.moe_intermediate_size)


def _check_moe(config) -> None:
    """llama.cpp's qwen3moe graph makes every layer sparse and renormalises the chosen experts' weights."""
    if config.model_type != "qwen3_moe":
        return
    if getattr(config, "mlp_only_layers", None) or getattr(config, "decoder_sparse_step", 1) != 1:
        raise UserError("GGUF export: llama.cpp's qwen3moe needs every layer to be MoE (mlp_only_layers is set)")
    if not getattr(config, "norm_topk_prob", True):
        raise UserError("GGUF export: llama.cpp's qwen3moe renormalises the top-k weights; norm_topk_prob is false")


def _rope(config) -> dict[str, Any]:
    """RoPE parameters; scaled RoPE variants need extra tensors or keys we do not write yet, so they are refused."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    kind = params.get("rope_type", "default")
    if kind != "default":
        raise UserError(f"GGUF export: RoPE scaling '{kind}' is not supported yet (only unscaled RoPE)")
    return params


def check(model_type: str, options: ExportOptions) -> None:
    """Fail before loading the model: an architecture or a tensor type we cannot write, a runtime not installed."""
    gguf_arch(model_type)
    if options.gguf_type not in TYPES:
        raise UserError(f"unknown GGUF type '{options.gguf_type}'; choose one of: {', '.join(TYPES)}")
    if "llama-cpp" in options.check_with:
        from thinktune.export.llama_cpp_check import check_installed

        check_installed()


def export_gguf(source: ExportSource, out: Path, options: ExportOptions) -> dict[str, Any]:
    check(source.model.config.model_type, options)
    model = source.merge()
    name = _slug(_artefact_name(source))
    path = out / f"{name}-{options.gguf_type}.gguf"
    written = write_gguf(model, source.tokenizer, path, options.gguf_type, name)
    vocab = written.pop("vocab")
    stops = stop_ids(source.tokenizer, model)
    modelfile = write_modelfile(path, vocab.chat_template, [vocab.tokens[i] for i in stops])
    found = read_back(path)
    if (
        found["tensor_count"] != sum(written["tensor_types"].values())
        or found["tensor_types"] != written["tensor_types"]
    ):
        raise RuntimeError(f"{path}: read back {found['tensor_types']}, wrote {written['tensor_types']}")
    reference = Reference.of(source, model, options, stops)
    checked = {}
    if "llama-cpp" in options.check_with:
        from thinktune.export import llama_cpp_check

        checked["llama_cpp"] = llama_cpp_check.compare(
            path, reference.texts, reference.ids, reference.logits, reference.greedy, options.max_new_tokens, stops
        )
    return {
        "artefact": str(path),
        "modelfile": str(modelfile),
        "gguf_type": options.gguf_type,
        "bytes": path.stat().st_size,
        "tokenizer_pre": vocab.pre,
        "tokenizer_pre_identified_by": vocab.identified_by,
        **found,
        **compare_with_transformers(source, model, path, found["head_dim"], options, stops, reference),
        **checked,
    }


@dataclass
class Reference:
    """The merged model's side of every comparison: rendered prompts, their ids, logits and greedy output."""

    texts: list[str]
    ids: list[list[int]]
    logits: list[np.ndarray]
    greedy: list[list[int]]

    @classmethod
    def of(cls, source: ExportSource, model: PreTrainedModel, options: ExportOptions, stops: list[int]) -> Reference:
        texts = source.chat_texts(options.prompts)
        ids = source.chat_ids(options.prompts)
        logits = [torch_logits(model, x) for x in ids]
        greedy = [torch_greedy(model, x, options.max_new_tokens, stops) for x in ids]
        return cls(texts, ids, logits, greedy)


def read_back(path: Path) -> dict[str, Any]:
    """Re-read the file with gguf's own reader: architecture, tensor count and types, head size."""
    reader = gguf.GGUFReader(path)
    arch = _field(reader, "general.architecture")
    return {
        "architecture": arch,
        "tensor_count": len(reader.tensors),
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors)),
        "head_dim": _field(reader, f"{arch}.attention.key_length"),
    }


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def compare_with_transformers(
    source: ExportSource,
    model: PreTrainedModel,
    path: Path,
    head_dim: int | None,
    options: ExportOptions,
    stops: list[int],
    ref: Reference,
) -> dict[str, Any]:
    """Load the GGUF with transformers (dequantised to float32); compare its tokenizer, logits and greedy output."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config, notes = None, []
    if head_dim and model.config.model_type in HEAD_DIM_NOT_READ:
        # transformers' GGUF reader ignores `attention.key_length` for these architectures and falls back to the
        # config class default (128 for Qwen3): take the head size from the file, as llama.cpp does.
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        if getattr(config, "head_dim", None) != head_dim:
            config.head_dim = head_dim
            notes.append(f"head_dim {head_dim} taken from {config.model_type}.attention.key_length")
    if model.config.model_type == "qwen3_moe":
        # Nor does it read `expert_feed_forward_length`, and its Qwen3-MoE default leaves the top-k weights
        # unnormalised where llama.cpp's qwen3moe graph normalises them: set both as llama.cpp runs the file.
        config = config or AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        config.moe_intermediate_size = int(_field(gguf.GGUFReader(path), "qwen3moe.expert_feed_forward_length"))
        config.norm_topk_prob = True
        notes.append("moe_intermediate_size and norm_topk_prob set as llama.cpp's qwen3moe reads them")
    loaded = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, config=config, dtype=torch.float32
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ids = ref.ids
    reread = [_chat_ids(tokenizer, source.tokenizer.chat_template, p) for p in options.prompts]
    logits = [torch_logits(loaded, x) for x in ids]
    n = options.max_new_tokens
    return {
        "compared_with": "merged model (PyTorch, float32) vs the GGUF loaded by transformers",
        "tokenizer_identical": reread == ids,
        "chat_template_identical": tokenizer.chat_template == source.tokenizer.chat_template,
        "max_abs_logit_diff": max_abs_diff(ref.logits, logits),
        "reference_logit_max": float(max(abs(r).max() for r in ref.logits)),
        "top1_agreement": top1_agreement(ref.logits, logits),
        "greedy": greedy_agreement(ref.greedy, [torch_greedy(loaded, x, n, stops) for x in ids]),
        **({"load_notes": notes} if notes else {}),
    }


# Architectures whose head size transformers' GGUF loader does not read from the file (transformers 5.23).
HEAD_DIM_NOT_READ = {"qwen3"}


def _chat_ids(tokenizer, chat_template: str, prompt: str) -> list[int]:
    """Render with the source's template, tokenize with the GGUF's tokenizer."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], chat_template=chat_template, tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _artefact_name(source: ExportSource) -> str:
    """The trained folder's name (its run's name for `runs/x/adapter`, `runs/x/model`), else the base model's
    directory name."""
    trained = source.trained
    if trained is None:
        return source.origin.path.name
    return trained.parent.name if trained.name in (ADAPTER, MODEL) else trained.name


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"
