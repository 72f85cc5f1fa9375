"""A vision-language model (a tiny random Qwen2.5-VL with the real Qwen2 tokenizer) loads through
AutoModelForImageTextToText and fine-tunes its language model on text: LoRA leaves the vision tower alone, packing
stays off (the model computes its own multimodal position ids), and the adapter loads back with PEFT. A model type
transformers knows neither as a causal LM nor as an image-text-to-text model is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_vl_model
from thinktune.config import MethodConfig, ModelConfig, TrainConfig
from thinktune.errors import ConfigError, ModelNotFoundError
from thinktune.methods import apply_method
from thinktune.models import load_pretrained

ROOT = Path(__file__).parents[2]
TEMPLATES = ROOT.parent / "shared" / "templates"


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory) -> Path:
    gguf = "deepseek-r1-distill-qwen.vocab.gguf"
    assert (TEMPLATES / gguf).is_file(), f"missing {TEMPLATES / gguf} (CI has ../shared beside the checkout)"
    return build_tiny_vl_model(tmp_path_factory.mktemp("vl") / "qwen2_5_vl", TEMPLATES, gguf)


def test_lora_adapts_the_language_model_only(vl_dir):
    model, tok, _ = load_pretrained(ModelConfig(name_or_path=str(vl_dir)))
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert model.config.get_text_config().pad_token_id == tok.pad_token_id
    peft = apply_method(model, MethodConfig(name="lora"))
    adapted = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert adapted and all(".language_model." in n for n in adapted)
    assert {n.split(".")[-4] for n in adapted} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def test_packing_is_off_for_models_with_their_own_position_ids(vl_dir):
    from thinktune.train.objectives.sft import resolve_levers

    model, _, _ = load_pretrained(ModelConfig(name_or_path=str(vl_dir)))
    assert resolve_levers(TrainConfig(), model).packing is False
    with pytest.raises(ConfigError, match="computes its own"):
        resolve_levers(TrainConfig(packing=True), model)


def test_train_on_text_and_load_the_adapter_back(vl_dir, tmp_path):
    out = tmp_path / "run"
    sets = [f"model.name_or_path={vl_dir}", "data.max_train_samples=16", "train.max_steps=3", "train.batch_size=4",
            "train.learning_rate=1e-2", "eval.max_samples=4", "eval.max_new_tokens=8", f"output_dir={out}"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "thinktune", "train", *[x for s in sets for x in ("--set", s)]],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "packing off" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["after"]["loss"] < summary["before"]["loss"]
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    peft = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(vl_dir), out / "adapter")
    lora = [n for n, _ in peft.named_parameters() if "lora_" in n]
    assert lora and all(".language_model." in n for n in lora)


def test_an_unknown_kind_of_model_is_one_line(tmp_path):
    from transformers import T5Config

    T5Config(d_model=8, num_layers=1, num_heads=1, d_ff=8, vocab_size=10).save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="neither a causal language model nor an image-text-to-text"):
        from thinktune.models.loading import ModelSource, model_class

        model_class(ModelSource(tmp_path))
