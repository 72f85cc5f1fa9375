"""GGUF export: llama.cpp names and metadata, read back by gguf's reader and by transformers, plus the Modelfile."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from thinktune.config import ModelConfig
from thinktune.errors import UserError
from thinktune.export import ExportOptions, run_export

FAST = ExportOptions(max_new_tokens=8)


def export(export_models, arch, tmp_path, gguf_type):
    model_dir, adapter = export_models[arch]
    return run_export(
        ModelConfig(name_or_path=str(model_dir)), "gguf", tmp_path, FAST.but(gguf_type=gguf_type), adapter
    )


def fields(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items()}, {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen2"])
def test_f32_round_trip_is_exact(export_models, tmp_path, arch):
    """Lossless tensors isolate the layout: names, Q/K permutation, metadata and tokenizer must all be right."""
    record = export(export_models, arch, tmp_path, "f32")
    assert record["max_abs_logit_diff"] < 1e-4
    assert record["greedy"]["identical"] == 1.0
    assert record["tokenizer_identical"] and record["chat_template_identical"]


@pytest.mark.parametrize(
    ("arch", "gguf_type", "expected"),
    [
        ("llama", "f16", {"F16": 16, "F32": 5}),  # 7 linears x 2 layers + embedding + LM head; 5 norms
        ("llama", "q8_0", {"Q8_0": 16, "F32": 5}),
        ("llama", "q4_0", {"Q4_0": 15, "Q8_0": 1, "F32": 5}),  # the LM head stays at 8 bits, as in llama.cpp
        ("qwen3", "bf16", {"BF16": 16, "F32": 9}),  # + attn_q_norm / attn_k_norm per layer
        ("qwen2", "q8_0", {"Q8_0": 16, "F32": 11}),  # + q/k/v biases per layer
    ],
)
def test_types_metadata_and_parity(export_models, tmp_path, arch, gguf_type, expected):
    record = export(export_models, arch, tmp_path, gguf_type)
    assert record["tensor_types"] == expected
    assert record["tensor_count"] == sum(expected.values())
    assert record["architecture"] == arch and record["tokenizer_identical"]

    meta, tensors = fields(record["artefact"])
    assert meta["general.architecture"] == arch
    assert meta[f"{arch}.context_length"] == 512 and meta[f"{arch}.embedding_length"] == 64
    assert meta[f"{arch}.block_count"] == 2 and meta[f"{arch}.feed_forward_length"] == 128
    assert meta[f"{arch}.attention.head_count"] == 4 and meta[f"{arch}.attention.head_count_kv"] == 2
    assert meta[f"{arch}.rope.freq_base"] == pytest.approx(10000.0)
    assert meta[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert meta["tokenizer.ggml.model"] == "gpt2"
    # transformers loads the Qwen2 model's tokenizer with Qwen2's own split regex, which llama.cpp calls `qwen2`
    assert meta["tokenizer.ggml.pre"] == ("qwen2" if arch == "qwen2" else "gpt-2")
    assert meta["tokenizer.ggml.eos_token_id"] == 2 and meta["tokenizer.ggml.padding_token_id"] == 0
    assert meta["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert meta["tokenizer.ggml.token_type"][:3] == [3, 3, 3]  # control tokens
    assert meta["tokenizer.ggml.merges"][0] == "Ġ a"
    assert "<|im_start|>" in meta["tokenizer.chat_template"]

    names = {"token_embd.weight", "output_norm.weight", "output.weight", "blk.1.ffn_down.weight"}
    names |= {f"blk.0.{t}.weight" for t in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up")}
    names |= {"blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"}
    names |= {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"} if arch == "qwen3" else set()
    names |= {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} if arch == "qwen2" else set()
    assert names <= set(tensors)

    # Quantisation error only: the layout is exact (test above). Tiny random models have near-tied next-token
    # logits (median top-2 gap ~0.03), so a greedy run can flip where a real model would not.
    limits = {"f16": 0.99, "bf16": 0.95, "q8_0": 0.9, "q4_0": 0.4}
    assert record["top1_agreement"] >= limits[gguf_type]


def test_modelfile_for_chatml(export_models, tmp_path):
    record = export(export_models, "llama", tmp_path, "q8_0")
    text = (tmp_path / "Modelfile").read_text()
    assert text.startswith(f"FROM ./{Path(record['artefact']).name}\n")
    assert "{{ .Role }}" in text and "<|im_start|>assistant" in text
    assert 'PARAMETER stop "<|im_end|>"' in text


def test_qwen3_moe_experts_stacked_as_llama_cpp_expects(tiny_model_dirs, tmp_path):
    """transformers 5's fused experts (gate_up_proj, down_proj) become ffn_{gate,up,down}_exps; f32 isolates layout."""
    model = ModelConfig(name_or_path=str(tiny_model_dirs["qwen3_moe"]))
    record = run_export(model, "gguf", tmp_path, FAST.but(gguf_type="f32"))
    assert record["max_abs_logit_diff"] < 1e-4 and record["greedy"]["identical"] == 1.0
    meta, tensors = fields(record["artefact"])
    assert meta["general.architecture"] == "qwen3moe"
    assert meta["qwen3moe.expert_count"] == 4 and meta["qwen3moe.expert_used_count"] == 2
    assert meta["qwen3moe.expert_feed_forward_length"] == 32
    # numpy shapes (experts, rows, columns); GGUF lists dimensions innermost first
    assert list(tensors["blk.0.ffn_gate_exps.weight"].shape) == [64, 32, 4]
    assert list(tensors["blk.0.ffn_up_exps.weight"].shape) == [64, 32, 4]
    assert list(tensors["blk.1.ffn_down_exps.weight"].shape) == [32, 64, 4]
    assert list(tensors["blk.0.ffn_gate_inp.weight"].shape) == [64, 4]


def test_moe_llama_cpp_cannot_run_is_refused(tiny_model_dirs, tmp_path):
    from transformers import AutoConfig

    from thinktune.export.gguf_file import _check_moe

    config = AutoConfig.from_pretrained(tiny_model_dirs["qwen3_moe"])
    _check_moe(config)
    for change, needle in [({"norm_topk_prob": False}, "norm_topk_prob"), ({"mlp_only_layers": [1]}, "every layer")]:
        changed = AutoConfig.from_pretrained(tiny_model_dirs["qwen3_moe"], **change)
        with pytest.raises(UserError, match=needle):
            _check_moe(changed)


def test_unsupported_architecture_is_one_line(tiny_model_dirs, tmp_path):
    with pytest.raises(UserError, match="does not support the 'deepseek_v3' architecture") as e:
        run_export(ModelConfig(name_or_path=str(tiny_model_dirs["deepseek_v3"])), "gguf", tmp_path, FAST)
    assert "\n" not in str(e.value)
    assert not any(tmp_path.iterdir())  # refused before writing anything


@pytest.mark.slow
def test_smollm2_q8_0_greedy_parity(tmp_path):
    """The bundled SmolLM2 (Llama architecture, tied embeddings) to GGUF q8_0, read back by transformers."""
    from thinktune.models import resolve_model

    try:
        source = resolve_model("smollm2-135m-instruct")
    except UserError as e:
        pytest.skip(str(e))
    prompts = (
        "Tom has 5 apples. He buys 3 more apples. How many apples does Tom have now?",
        "Please reason step by step: a train travels 60 miles per hour for 2 hours. How far does it travel?",
    )
    options = ExportOptions(gguf_type="q8_0", prompts=prompts, max_new_tokens=12)
    record = run_export(ModelConfig(name_or_path=str(source.path)), "gguf", tmp_path, options)
    assert record["tensor_types"] == {"Q8_0": 211, "F32": 61}  # tied: no output.weight
    assert record["tokenizer_identical"] and record["chat_template_identical"]
    assert record["greedy"]["identical"] == 1.0
    assert record["top1_agreement"] > 0.95
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in (tmp_path / "Modelfile").read_text()
