"""Every checkpoint of a PEFT run is a loadable adapter: PeftModel.from_pretrained gives the logits the training model
had at that step, `thinktune eval --adapter checkpoints/step-N` runs on it mid-run, and resume still reads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from peft import PeftModel
from rich.console import Console
from transformers import AutoModelForCausalLM

from thinktune.config import load_config
from thinktune.train.engine.loggers import read_metrics
from thinktune.train.engine.loop import TrainLoop
from thinktune.train.sft import run_sft

ROOT = Path(__file__).parents[2]
QUIET = Console(quiet=True)
IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])


def sets(model_dir, out, *extra):
    return [
        f"model.name_or_path={model_dir}",
        f"output_dir={out}",
        "data.test=null",
        "data.max_train_samples=32",
        "data.max_length=512",
        "train.max_steps=4",
        "train.batch_size=4",
        "train.learning_rate=5e-3",
        "train.save_steps=2",
        "train.save_total_limit=3",
        "train.report_to=[]",
        *extra,
    ]


def test_checkpoints_are_adapters_with_the_training_logits(tiny_model_dirs, tmp_path, monkeypatch):
    model_dir = tiny_model_dirs["qwen3"]
    seen: dict[int, torch.Tensor] = {}
    save = TrainLoop._save

    def save_and_record(self, pos):  # the in-training model's logits at the step it checkpoints
        save(self, pos)
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        with torch.no_grad():
            seen[pos.step] = model(input_ids=IDS.to(self.accelerator.device)).logits.cpu()
        model.train()

    monkeypatch.setattr(TrainLoop, "_save", save_and_record)
    run = tmp_path / "run"
    run_sft(load_config(None, sets(model_dir, run)), QUIET)
    assert sorted(seen) == [2, 4]

    base_logits = AutoModelForCausalLM.from_pretrained(model_dir).eval()(IDS).logits
    for step in (2, 4):
        ckpt = run / "checkpoints" / f"step-{step}"
        for name in ("adapter_config.json", "adapter_model.safetensors", "trainable.safetensors", "position.json"):
            assert (ckpt / name).is_file(), (step, name)
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), ckpt).eval()
        with torch.no_grad():
            logits = loaded(IDS).logits
        assert torch.equal(logits, seen[step]), f"step-{step}: adapter logits differ from the training model's"
        assert not torch.allclose(logits, base_logits)
    assert not torch.allclose(seen[2], seen[4])
    final = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(final(IDS).logits, seen[4])  # the last checkpoint is the run's adapter

    # The CLI takes a checkpoint as --adapter (what chat/serve/export resolve the same way).
    r = subprocess.run(
        [sys.executable, "-m", "thinktune", "eval", "--model", str(model_dir)]
        + ["--adapter", str(run / "checkpoints" / "step-2"), "--max-samples", "2", "--set", "eval.max_new_tokens=4"]
        + ["-o", str(tmp_path / "ev")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "ev" / "report.json").read_text())["headline"]["n"] == 2

    # Resume still reads the checkpoint: from step-2, steps 3-4 retrace the uninterrupted run.
    resumed = tmp_path / "resumed"
    summary = run_sft(load_config(None, sets(model_dir, resumed)), QUIET, resume=str(run / "checkpoints" / "step-2"))
    assert summary["steps"] == 4 and summary["resumed_from"].endswith("step-2")
    first = {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl")}
    again = {r["step"]: r["loss"] for r in read_metrics(resumed / "metrics.jsonl")}
    assert sorted(again) == [3, 4]
    assert all(abs(again[s] - first[s]) < 1e-6 for s in (3, 4))


def test_non_peft_checkpoints_hold_only_the_resume_state(tiny_model_dirs, tmp_path):
    run = tmp_path / "run"
    run_sft(load_config(None, sets(tiny_model_dirs["llama"], run, "method.name=freeze", "train.max_steps=2")), QUIET)
    ckpt = run / "checkpoints" / "step-2"
    assert (ckpt / "trainable.safetensors").is_file() and not (ckpt / "adapter_config.json").exists()


def test_a_second_adapter_stays_out_of_the_checkpoint(tiny_model_dirs, tmp_path):
    """GRPO continuing an adapter keeps a frozen 'reference' copy beside it; the checkpoint holds the trained one."""
    from peft import LoraConfig, get_peft_model

    from thinktune.train.engine.checkpoint import TrainPosition, save_checkpoint

    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]), LoraConfig(r=4))
    peft.add_adapter("reference", peft.peft_config["default"])
    params = [(n, p) for n, p in peft.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([p for _, p in params])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ckpt = save_checkpoint(tmp_path, TrainPosition(step=1), params, opt, sched, keep=1, adapter=peft)
    assert (ckpt / "adapter_config.json").is_file() and not (ckpt / "reference").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1"]  # no scratch dirs left behind
