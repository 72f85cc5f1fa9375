"""Every method family through the real SFT recipe (`run_sft` with `--set method.name=X`): the recipe's calls
(apply, optimizer_parameters, on_optimizer_step, save_trained) work, and what it saves loads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM

from thinktune.config import load_config
from thinktune.methods import load_trained
from thinktune.train.sft import run_sft

CASES = [
    ("adalora", "llama", ["method.r=4", "method.target_r=2"], ["adapter_config.json", "ranks.json"]),
    ("prompt_tuning", "qwen3", ["method.num_virtual_tokens=4"], ["adapter_config.json"]),
    ("prefix_tuning", "llama", ["method.num_virtual_tokens=4"], ["adapter_config.json"]),
    ("ia3", "deepseek_v3", [], ["adapter_config.json"]),
    ("lora", "deepseek_v3", ["method.expert_lora=true", "method.dropout=0"], ["adapter_config.json"]),
    ("freeze", "qwen3", ["method.top_layers=1", "method.progressive_unfreeze_step=2"], ["trained.safetensors"]),
    ("full", "llama", [], ["model.safetensors", "config.json"]),
    ("esft", "qwen3_moe", ["method.esft_threshold=0.5"], ["trained.safetensors", "experts.json"]),
]


@pytest.mark.parametrize(("name", "arch", "sets", "files"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_method_through_the_recipe(name, arch, sets, files, tiny_model_dirs, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_model_dirs[arch]}",
            f"output_dir={out}",
            "data.max_train_samples=8",
            "data.max_length=512",
            "train.max_steps=3",
            "train.batch_size=4",
            "train.learning_rate=1e-2",
            "eval.before=false",
            "eval.after=false",
            f"method.name={name}",
            *(f"{s}" for s in sets),
        ],
    )
    summary = run_sft(cfg, Console(quiet=True))
    assert summary["steps"] == 3 and summary["method"] == name
    saved = Path(summary["adapter_dir"])
    for f in [*files, "tokenizer_config.json"]:
        assert (saved / f).is_file(), f
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch])
    reference = base(input_ids=torch.tensor([[1, 5, 9, 2]])).logits
    tuned = load_trained(base, saved).eval()
    with torch.no_grad():
        logits = tuned(input_ids=torch.tensor([[1, 5, 9, 2]])).logits
    assert logits.shape == reference.shape and not torch.allclose(logits, reference)
    if name == "adalora":
        assert json.loads((saved / "ranks.json").read_text())
