"""Tiny models with non-trivial LoRA adapters for the export tests (Llama, Qwen3, and a tiny Qwen2 built here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config

from tests.tiny_models import build_tiny_tokenizer, tiny_config

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_tiny_qwen2(out_dir: Path, seed: int = 0) -> Path:
    """Like tests/tiny_models.py, for Qwen2 (q/k/v biases, NeoX RoPE)."""
    tokenizer = build_tiny_tokenizer()
    common = tiny_config("llama", tokenizer).to_dict()
    keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
    keys += ["num_key_value_heads", "max_position_embeddings", "eos_token_id", "pad_token_id", "bos_token_id"]
    config = Qwen2Config(**{k: common[k] for k in keys}, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random init leaves the biases at zero; make them count
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.02)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def make_adapter(model_dir: Path, out_dir: Path, use_dora: bool = False, seed: int = 0) -> Path:
    """A LoRA/DoRA adapter with random A *and* B (init_lora_weights=False), so merging changes the weights."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=ALL_LINEAR, init_lora_weights=False, use_dora=use_dora)
    get_peft_model(model, config).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def export_models(tiny_model_dirs, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """arch → (model dir, LoRA adapter dir) for llama, qwen3 and qwen2."""
    root = tmp_path_factory.mktemp("export_models")
    dirs = {"llama": tiny_model_dirs["llama"], "qwen3": tiny_model_dirs["qwen3"]}
    dirs["qwen2"] = build_tiny_qwen2(root / "qwen2")
    return {arch: (d, make_adapter(d, root / f"{arch}-lora")) for arch, d in dirs.items()}
