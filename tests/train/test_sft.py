"""SFT recipe on tiny random models: 3 steps, save, reload with identical logits; frozen weights untouched."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from rich.console import Console
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from thinktune.config import load_config
from thinktune.train.sft import run_sft


def tiny_run_config(model_dir, out_dir, *extra):
    return load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            f"output_dir={out_dir}",
            "data.max_train_samples=24",
            "data.max_length=512",
            "train.max_steps=3",
            "train.batch_size=4",
            "train.learning_rate=1e-2",
            "eval.max_samples=4",
            "eval.max_new_tokens=8",
            "eval.batch_size=4",
            *extra,
        ],
    )


def test_three_steps_save_reload(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    summary = run_sft(tiny_run_config(tiny_model_dir, out), Console(quiet=True))

    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "rejects.jsonl",
        "plots/loss.png",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/tokenizer_config.json",
        "eval/before.json",
        "eval/after.md",
    ):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").iterdir())
    saved = json.loads((out / "summary.json").read_text())
    assert saved["steps"] == 3 and summary["steps"] == 3
    for side in ("before", "after"):
        assert 0 <= saved[side]["accuracy"] <= 1 and 0 <= saved[side]["format_compliance"] <= 1
    assert saved["train_tokens_per_second"] > 0 and saved["wall_seconds"] > 0
    assert saved["paired"]["n"] == saved["after"]["n"]  # before vs after on the same tasks (McNemar)
    assert len([line for line in (out / "metrics.jsonl").read_text().splitlines() if line]) == 3

    # Reload with plain PEFT: adapter changed the model, base weights stayed bit-identical.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    tok = AutoTokenizer.from_pretrained(out / "adapter")
    ids = tok("<|im_start|>user\n3 + 4?<|im_end|>\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base_logits = base(ids).logits
    tuned = PeftModel.from_pretrained(base, out / "adapter").eval()
    with torch.no_grad():
        tuned_logits = tuned(ids).logits
        again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "adapter")
        again_logits = again.eval()(ids).logits
    assert torch.equal(tuned_logits, again_logits)
    assert not torch.allclose(base_logits, tuned_logits)
    lora = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in lora.items()), "LoRA B stayed zero: nothing trained"
    merged_base = tuned.get_base_model()
    for name, p in merged_base.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(p, base_state[key]), f"frozen weight {key} changed"


def test_rejects_are_written_and_limit_stops_run(tiny_model_dirs, tmp_path):
    data = tmp_path / "train.jsonl"
    good = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "\\boxed{4}"}]}
    lines = [json.dumps(good)] * 9 + ["{not json"]
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    cfg = tiny_run_config(
        tiny_model_dirs["llama"], out, f"data.train=[{data}]", "eval.before=false", "train.max_steps=1"
    )
    run_sft(cfg, Console(quiet=True))
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert rejects == [{"file": str(data), "line": 10, "reason": rejects[0]["reason"]}]
    assert "invalid JSON" in rejects[0]["reason"]

    from thinktune.errors import DataError

    data.write_text("\n".join([json.dumps(good)] * 2 + ["{bad"] * 2) + "\n")
    with pytest.raises(DataError, match="max_bad_fraction"):
        run_sft(
            tiny_run_config(tiny_model_dirs["llama"], tmp_path / "run2", f"data.train=[{data}]"), Console(quiet=True)
        )
