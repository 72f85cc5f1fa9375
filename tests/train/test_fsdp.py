"""FSDP2 on CPU (gloo): `thinktune train --num-processes 2 --set train.distributed=fsdp` and `accelerate launch`
with the shipped FSDP2 config train the same as one process, save sharded checkpoints that resume exactly, and end
with the whole model saved and evaluated."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.test_engine import ROOT, base_sets, cli, losses
from thinktune.config import TrainConfig
from thinktune.errors import ConfigError, UserError
from thinktune.train.engine.checkpoint import check_layout
from thinktune.train.engine.sharding import check_fsdp

COMMON = ["eval.before=false", "eval.after=false", "method.dropout=0"]


def train(*sets: str, processes: int = 1) -> None:
    args = ["train", *(["--num-processes", str(processes)] if processes > 1 else [])]
    proc = cli(*args, *[x for s in sets for x in ("--set", s)])
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, (out + err)[-3000:]
    return out


def close(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) > 0
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def test_fsdp_lora_matches_one_process_and_its_sharded_checkpoint_resumes(tiny_model_dirs, tmp_path):
    model = tiny_model_dirs["llama"]
    train(*base_sets(model, tmp_path / "one", 6, *COMMON))
    sharded = ["train.batch_size=2", "train.save_steps=3", "train.distributed=fsdp", "train.layer_stats_steps=2"]
    out = train(*base_sets(model, tmp_path / "fsdp", 6, *COMMON, *sharded), processes=2)
    assert "FSDP2" in out
    # Same samples, same global batch: only the float summation order differs (reduce-scatter).
    assert close(losses(tmp_path / "one"), losses(tmp_path / "fsdp")) < 1e-4
    one = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    two = load_file(tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors")
    assert one.keys() == two.keys() and all(torch.allclose(one[k], two[k], atol=1e-5) for k in one)

    step3 = tmp_path / "fsdp" / "checkpoints" / "step-3"
    assert json.loads((step3 / "layout.json").read_text()) == {"processes": 2, "sharded": True}
    shards = [load_file(step3 / f"trainable.rank{r}.safetensors") for r in (0, 1)]
    name = next(k for k in shards[0] if "lora_A" in k)
    assert shards[0][name].shape[0] + shards[1][name].shape[0] == one[name.replace(".default", "")].shape[0]
    # The checkpoint's adapter is whole: PEFT loads it onto the base.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), step3)

    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(step3, tmp_path / "resumed" / "checkpoints" / "step-3")
    sets = base_sets(model, tmp_path / "resumed", 6, *COMMON, *sharded)
    proc = cli("train", "--num-processes", "2", "--resume", "auto", *[x for s in sets for x in ("--set", s)])
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "resumed from" in out
    assert close(losses(tmp_path / "fsdp")[3:], losses(tmp_path / "resumed")) < 1e-6
    # A sharded checkpoint needs its layout: one process (unsharded) is refused in one line.
    sets = base_sets(model, tmp_path / "resumed", 6, *COMMON)
    proc = cli("train", "--resume", str(step3), *[x for s in sets for x in ("--set", s)])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "sharded by 2 processes" in err and "Traceback" not in err


@pytest.mark.parametrize(("method", "saved"), [("full", "model.safetensors"), ("freeze", "trained.safetensors")])
def test_fsdp_full_and_freeze_match_one_process(tiny_model_dirs, tmp_path, method, saved):
    model = tiny_model_dirs["qwen3"]
    sets = [f"method.name={method}", "train.learning_rate=1e-3"]  # the chunked LM-head loss (auto) included
    train(*base_sets(model, tmp_path / "one", 4, *COMMON, *sets))
    sharded = ["train.batch_size=2", "train.distributed=fsdp"]
    train(*base_sets(model, tmp_path / "fsdp", 4, *COMMON, *sets, *sharded), processes=2)
    assert close(losses(tmp_path / "one"), losses(tmp_path / "fsdp")) < 1e-4
    a = load_file(tmp_path / "one" / "model" / saved)
    b = load_file(tmp_path / "fsdp" / "model" / saved)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_accelerate_launch_with_the_shipped_fsdp2_config_trains_saves_and_evaluates(tiny_model_dirs, tmp_path):
    sets = base_sets(tiny_model_dirs["llama"], tmp_path / "run", 4, "train.batch_size=2", "eval.max_new_tokens=8")
    sets = [s for s in sets if s != "data.test=null"] + ["eval.max_samples=6"]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "examples" / "accelerate" / "fsdp2.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        "0",
        "-m",
        "thinktune",
        "train",
        *[x for s in sets for x in ("--set", s)],
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "FSDP2" in proc.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["after"]["loss"] < summary["before"]["loss"]  # evaluated on the gathered, trained model
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    ("settings", "method", "recipe", "message"),
    [
        ({"distributed": "fsdp"}, "lora", "dpo", "thinktune dpo does not shard"),
        ({"distributed": "fsdp"}, "adalora", "sft", "not 'adalora'"),
        ({"distributed": "fsdp", "eval_steps": 5}, "lora", "sft", "train.eval_steps"),
    ],
)
def test_what_the_sharded_path_does_not_run_is_refused_in_one_line(settings, method, recipe, message):
    with pytest.raises(ConfigError, match=message):
        check_fsdp(TrainConfig(**settings), method, recipe)


def test_an_fsdp_config_under_ddp_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="train.distributed=ddp"):
        check_fsdp(TrainConfig(distributed="ddp"), "lora", "sft")


def test_checkpoint_layouts(tmp_path: Path):
    (tmp_path / "layout.json").write_text(json.dumps({"processes": 2, "sharded": True}))
    check_layout(tmp_path, 2, 1)
    with pytest.raises(UserError, match="--num-processes 2"):
        check_layout(tmp_path, 4, 0)
    (tmp_path / "layout.json").write_text(json.dumps({"processes": 2, "sharded": False}))
    check_layout(tmp_path, 1, None)  # whole weights resume with any number of processes
    with pytest.raises(UserError, match="unsharded"):
        check_layout(tmp_path, 2, 0)


def test_a_failing_process_prints_its_error_without_the_launchers_traceback(tiny_model_dirs, tmp_path):
    sets = base_sets(tiny_model_dirs["llama"], tmp_path / "run", 1, "data.train=[missing.jsonl]")
    proc = cli("train", "--num-processes", "2", *[x for s in sets for x in ("--set", s)])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "missing.jsonl: data file not found" in err and "Traceback" not in err and "ChildFailedError" not in err
