"""Merged export: LoRA/DoRA folded into the base, plain transformers checkpoint, logits equal to the PeftModel's."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.export.conftest import make_adapter
from thinktune.config import ModelConfig
from thinktune.export import ExportOptions, run_export

FAST = ExportOptions(max_new_tokens=6)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen2"])
def test_merged_matches_the_unmerged_adapter(export_models, tmp_path, arch):
    model_dir, adapter = export_models[arch]
    record = run_export(ModelConfig(name_or_path=str(model_dir)), "merged", tmp_path, FAST, adapter)

    assert record["adapter"] == "lora" and record["compared_with"] == "unmerged PeftModel"
    assert record["max_abs_logit_diff"] < 1e-4
    assert record["greedy"]["identical"] == 1.0
    assert json.loads((tmp_path / "verify.json").read_text()) == record
    for name in ("config.json", "generation_config.json", "tokenizer.json", "model.safetensors"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "adapter_config.json").exists()

    merged = AutoModelForCausalLM.from_pretrained(tmp_path)  # plain transformers, no PEFT
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    x = torch.tensor([[5, 6, 7, 8]])
    assert (merged(x).logits - base(x).logits).abs().max() > 1e-3  # the adapter really is in the weights


def test_merged_dora(export_models, tmp_path):
    model_dir, _ = export_models["llama"]
    dora = make_adapter(model_dir, tmp_path / "dora", use_dora=True)
    record = run_export(ModelConfig(name_or_path=str(model_dir)), "merged", tmp_path / "out", FAST, dora)
    assert record["adapter"] == "dora"
    assert record["max_abs_logit_diff"] < 1e-4


def test_merged_shards_and_dtype(export_models, tmp_path):
    model_dir, adapter = export_models["qwen3"]
    options = FAST.but(max_shard_size="100KB", merged_dtype="bfloat16")
    record = run_export(ModelConfig(name_or_path=str(model_dir)), "merged", tmp_path, options, adapter)
    assert record["shards"] > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    assert record["dtype"] == "bfloat16"
    assert record["max_abs_logit_diff"] < 0.1  # bf16 rounding, not a broken merge
    assert AutoModelForCausalLM.from_pretrained(tmp_path).dtype == torch.bfloat16
