"""Merged export of a vision-language run (a tiny random Qwen2.5-VL, LoRA trained a few steps on images): the
checkpoint keeps the base's image processor, reloads with AutoModelForImageTextToText, and its logits on a prompt
with an image are the unmerged PeftModel's. The formats that cannot export one refuse it in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.models.test_vision_language import TEMPLATES, colour_records, train
from tests.tiny_models import build_tiny_vl_model

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def vl_run(tmp_path_factory) -> tuple[Path, Path]:
    """(base model dir, run dir) of a 3-step LoRA run on images."""
    gguf = "deepseek-r1-distill-qwen.vocab.gguf"
    assert (TEMPLATES / gguf).is_file(), f"missing {TEMPLATES / gguf} (CI has ../shared beside the checkout)"
    root = tmp_path_factory.mktemp("vl_export")
    base = build_tiny_vl_model(root / "qwen2_5_vl", TEMPLATES, gguf)
    run = root / "run"
    sets = [f"model.name_or_path={base}", f"data.train=[{colour_records(root / 'data')}]", "data.test=null",
            "train.max_steps=3", "train.batch_size=4", "train.learning_rate=2e-2", "train.warmup_ratio=0",
            "eval.before=false", "eval.after=false", f"output_dir={run}"]  # fmt: skip
    train(sets)
    return base, run


def export(run: Path, fmt: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "thinktune", "export", "--run-dir", str(run), "--format", fmt, "-o", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_merged_vl_export_matches_the_adapter_on_an_image(vl_run, tmp_path):
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from thinktune.models.vision import load_vision

    base, run = vl_run
    out = tmp_path / "merged"
    proc = export(run, "merged", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / "verify.json").read_text())
    assert record["image_prompts"]["count"] == 1 and record["image_prompts"]["max_abs_logit_diff"] < 1e-4
    assert record["max_abs_logit_diff"] >= record["image_prompts"]["max_abs_logit_diff"]  # the image is covered
    card = (out / "README.md").read_text()
    assert "pipeline_tag: image-text-to-text" in card and "AutoModelForImageTextToText.from_pretrained(REPO)" in card

    merged = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()  # plain transformers
    assert type(merged).__name__ == "Qwen2_5_VLForConditionalGeneration"
    untuned = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    peft = PeftModel.from_pretrained(untuned, run / "adapter").eval()
    tok = AutoTokenizer.from_pretrained(out)
    vision = load_vision(merged, out)  # the exported image processor
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 84, 3), dtype=np.uint8))
    messages = vision.messages([{"role": "user", "content": "<image>What colour is this?"}])
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([vision.prompt_ids(tok, prompt, [image])])
    assert int((ids == merged.config.image_token_id).sum()) > 1
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **vision.pixels([image])}
    with torch.inference_mode():
        got, want = merged(**inputs).logits, peft(**inputs).logits
        with peft.disable_adapter():
            before = peft(**inputs).logits
    print(f"max |merged - PeftModel| logit difference on an image prompt: {(got - want).abs().max():.3g}")
    assert torch.allclose(got, want, atol=1e-4)
    assert (got - before).abs().max() > 1e-3  # the adapter really is in the weights


@pytest.mark.parametrize("fmt", ["gguf", "onnx", "int8"])
def test_other_formats_refuse_a_vl_run_in_one_line(vl_run, tmp_path, fmt):
    _, run = vl_run
    proc = export(run, fmt, tmp_path / fmt)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"--format {fmt}" in lines[0] and "vision-language" in lines[0] and "--format merged" in lines[0]
