"""The memory planner: its parameter counts match the methods, its peak matches what a training step really holds.

Measured = peak RSS during two training steps on CPU minus RSS before them, in a fresh process with
MALLOC_MMAP_THRESHOLD_ so RSS follows live tensor bytes (tests/models/measure_memory.py). Compared with the
planner's peak minus the weights (those are resident before the step).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from thinktune.config import MethodConfig
from thinktune.methods import MethodContext, apply_method, count_parameters
from thinktune.models.memory import (
    GiB,
    TrainSetup,
    estimate,
    parse_size,
    recommend,
    shape_from_config,
    trainable_counts,
)

ROOT = Path(__file__).parents[2]
BOUND = 0.25  # asserted; the planner is typically within ±6% of these measurements


def shape_of(model_dir):
    return shape_from_config(AutoConfig.from_pretrained(model_dir))


def measure(cases: list[dict]) -> list[dict]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "4096"}
    r = subprocess.run(
        [sys.executable, "-m", "tests.models.measure_memory", json.dumps(cases)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    if not all(x["peak_reset"] for x in results[1:]):
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    return results


def predicted(model_dir, case) -> int:
    setup = TrainSetup(
        method=MethodConfig(**case["method"]),
        batch_size=case["batch"],
        seq_len=case["seq"],
        precision="fp32",
        gradient_checkpointing=case.get("checkpointing", False),
        device="cpu",
        logits_len=case.get("keep"),
    )
    est = estimate(shape_of(model_dir), setup)
    return est.total - est.weights


def compare(cases: list[dict]) -> list[tuple[str, float]]:
    errors = []
    for case, got in zip(cases, measure(cases), strict=True):
        want = predicted(case["model_dir"], case)
        err = want / got["delta_bytes"] - 1
        label = f"{Path(case['model_dir']).name} {case['method']} {case['batch']}x{case['seq']}"
        label += " ckpt" if case.get("checkpointing") else ""
        label += f" grpo keep {case['keep']}" if case.get("keep") else ""
        print(f"{label}: predicted {want / 2**20:.1f} MiB, measured {got['delta_bytes'] / 2**20:.1f} MiB ({err:+.1%})")
        errors.append((label, err))
    return errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [("24GB", 24 * GiB), ("80GiB", 80 * GiB), ("16g", 16 * GiB), ("512MB", 512 * 2**20), ("1.5TB", int(1.5 * 2**40))],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_parse_size_rejects_nonsense():
    with pytest.raises(ValueError, match="24GB"):
        parse_size("lots")


@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen3_moe", "deepseek_v3"])
def test_shape_counts_every_parameter(arch, tiny_model_dirs):
    shape = shape_of(tiny_model_dirs[arch])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch])
    assert shape.total_params == sum(p.numel() for p in model.parameters())
    assert shape.moe == (arch in ("qwen3_moe", "deepseek_v3"))
    assert shape.dense_layers == ((0,) if arch == "deepseek_v3" else ())


METHOD_CASES = [
    ("llama", {"name": "lora"}),
    ("llama", {"name": "lora", "use_dora": True}),
    ("qwen3", {"name": "lora", "target_modules": "all-linear"}),
    ("deepseek_v3", {"name": "lora", "expert_lora": True, "dropout": 0.0}),
    ("qwen3_moe", {"name": "lora", "expert_lora": True, "dropout": 0.0, "train_router": True}),
    ("llama", {"name": "adalora"}),
    ("qwen3", {"name": "ia3"}),
    ("deepseek_v3", {"name": "ia3"}),
    ("qwen3_moe", {"name": "ia3", "train_router": True}),
    ("deepseek_v3", {"name": "adalora", "train_router": True}),
    ("llama", {"name": "prompt_tuning"}),
    ("qwen3", {"name": "p_tuning"}),
    ("qwen3_moe", {"name": "prefix_tuning"}),
    ("llama", {"name": "freeze", "top_layers": 1}),
    ("deepseek_v3", {"name": "freeze", "trainable": "mlp"}),
    ("qwen3_moe", {"name": "full"}),
]


@pytest.mark.parametrize(
    ("arch", "fields"), METHOD_CASES, ids=[f"{a}-{'-'.join(map(str, f.values()))}" for a, f in METHOD_CASES]
)
def test_trainable_counts_match_the_methods(arch, fields, tiny_model_dirs):
    cfg = MethodConfig(**fields)
    model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch]), cfg, MethodContext(total_steps=5))
    trainable, _ = count_parameters(model)
    assert trainable_counts(shape_of(tiny_model_dirs[arch]), cfg)[0] == trainable


def test_esft_optimizer_holds_whole_expert_tensors(tiny_model_dirs):
    shape = shape_of(tiny_model_dirs["qwen3_moe"])
    trained, updated = trainable_counts(shape, MethodConfig(name="esft", esft_threshold=0.25))
    experts = sum(n for _, n in shape.params if "experts" in _)
    assert updated == experts and trained == experts // 4


def test_parts_follow_precision_checkpointing_and_gpus(tiny_model_dirs):
    shape = shape_of(tiny_model_dirs["llama"])
    full32 = estimate(shape, TrainSetup(method=MethodConfig(name="full"), precision="fp32"))
    full16 = estimate(shape, TrainSetup(method=MethodConfig(name="full"), precision="bf16"))
    assert full32.weights == 2 * full16.weights == shape.total_params * 4
    assert full32.optimizer == 2 * full32.gradients == 8 * shape.total_params
    ckpt = estimate(shape, TrainSetup(method=MethodConfig(name="full"), gradient_checkpointing=True))
    assert ckpt.activations < full16.activations
    ddp = estimate(shape, TrainSetup(method=MethodConfig(name="full"), gpus=4))
    assert ddp.gradients == 2 * full16.gradients and ddp.activations == full16.activations
    qlora = estimate(shape, TrainSetup(method=MethodConfig(name="qlora")))
    lora = estimate(shape, TrainSetup(method=MethodConfig(name="lora")))
    assert qlora.weights < lora.weights
    assert full16.total == full16.weights + full16.optimizer + max(full16.activations, 2 * full16.gradients)
    assert ddp.total - full16.total == ddp.ddp_buckets == full16.gradients


def test_recommendations(tiny_model_dirs):
    shape = shape_of(tiny_model_dirs["llama"])
    asked = TrainSetup(method=MethodConfig(name="full"), batch_size=64, seq_len=512)
    assert recommend(shape, asked, 80 * GiB).note == "fits as asked"
    need = estimate(shape, asked).total
    tight = recommend(shape, asked, int(need * 0.5))
    assert tight.fits and tight.setup.gradient_checkpointing
    assert tight.estimate.total <= 0.9 * need * 0.5
    hopeless = recommend(shape, asked, 1024)
    assert not hopeless.fits


def test_qlora_is_the_last_resort(tiny_model_dirs):
    """A device that holds the 4-bit weights but not the full-precision ones gets method qlora."""
    shape = shape_of(tiny_model_dirs["llama"])
    asked = TrainSetup(method=MethodConfig(name="lora"), batch_size=1, seq_len=64, gradient_checkpointing=True)
    four_bit = estimate(shape, replace(asked, method=MethodConfig(name="qlora")))
    assert four_bit.total < estimate(shape, asked).total
    rec = recommend(shape, asked, int(four_bit.total / 0.9) + 1)
    assert rec.fits and rec.setup.method.name == "qlora"


def test_prediction_matches_measured_peak_on_tiny_models(tiny_model_dirs):
    d = tiny_model_dirs
    cases = [
        {"model_dir": str(d["llama"]), "method": {"name": "lora"}, "batch": 4, "seq": 256},
        {"model_dir": str(d["qwen3_moe"]), "method": {"name": "esft"}, "batch": 4, "seq": 256},
        {"model_dir": str(d["deepseek_v3"]), "method": {"name": "full"}, "batch": 4, "seq": 256},
        {"model_dir": str(d["qwen3"]), "method": {"name": "lora"}, "batch": 4, "seq": 256, "checkpointing": True},
    ]
    for label, err in compare(cases):
        assert abs(err) < BOUND, f"{label}: predicted {err:+.1%} off the measured peak"


def test_grpo_pass_prediction_matches_measured_peak(tiny_model_dirs):
    """GRPO's training pass: b·G sequences, the LM head on the completion positions only (`logits_to_keep`)."""
    d = tiny_model_dirs
    cases = [
        {"model_dir": str(d["llama"]), "method": {"name": "lora"}, "batch": 16, "seq": 128, "keep": 48},
        {"model_dir": str(d["qwen3"]), "method": {"name": "full"}, "batch": 16, "seq": 128, "keep": 48},
    ]
    for label, err in compare(cases):
        assert abs(err) < BOUND, f"{label}: predicted {err:+.1%} off the measured peak"
    # the head on 48 of 128 positions: the planner counts less than for the whole sequence
    shape = shape_of(d["llama"])
    whole = estimate(shape, TrainSetup(batch_size=16, seq_len=128))
    kept = estimate(shape, TrainSetup(batch_size=16, seq_len=128, logits_len=48))
    assert kept.activations < whole.activations
    full = TrainSetup(method=MethodConfig(name="full"), batch_size=16, seq_len=128)
    with_ref = estimate(shape, replace(full, reference_copy=True))
    assert with_ref.weights == 2 * estimate(shape, full).weights  # the frozen KL reference of a full-model run


@pytest.mark.slow
def test_prediction_matches_measured_peak_on_smollm2():
    from thinktune.models.loading import resolve_model

    smol = str(resolve_model("smollm2-135m-instruct").path)
    cases = [
        {"model_dir": smol, "method": {"name": "lora"}, "batch": 2, "seq": 128},
        {"model_dir": smol, "method": {"name": "lora"}, "batch": 2, "seq": 128, "checkpointing": True},
    ]
    for label, err in compare(cases):
        assert abs(err) < BOUND, f"{label}: predicted {err:+.1%} off the measured peak"


def test_plan_command(tiny_model_dirs):
    from typer.testing import CliRunner

    from thinktune.cli import app

    args = ["plan", "--model", str(tiny_model_dirs["llama"]), "--method", "full", "--batch-size", "64"]
    r = CliRunner().invoke(app, [*args, "--seq-len", "512", "--device", "64MB"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "weights" in r.output and "activ" in r.output and "peak" in r.output and "64MB" in r.output
    assert "gradient checkpointing on" in r.output
    bad = CliRunner().invoke(app, [*args, "--device", "lots"])
    assert bad.exit_code == 2
    dense = CliRunner().invoke(app, ["plan", "--model", str(tiny_model_dirs["llama"]), "--method", "esft"])
    assert dense.exit_code == 2
    grpo = ["--seq-len", "128", "--grpo-generations", "8"]
    rl = CliRunner().invoke(app, [*args[:-1], "4", *grpo, "--completion-length", "48"], env={"COLUMNS": "200"})
    assert rl.exit_code == 0, rl.output
    text = " ".join(rl.output.split())  # rich wraps at the console width
    assert "4 prompts × G=8 = batch 32" in text and "last 48 positions" in text
    assert "frozen KL reference copy" in text  # method full
    for extra, error in ((["--completion-length", "128"], "between 1 and --seq-len"),
                         (["--grpo-generations", "0"], "at least 1")):  # fmt: skip
        bad_rl = CliRunner().invoke(app, [*args, *grpo, *extra])
        assert bad_rl.exit_code == 2 and error in " ".join(bad_rl.output.split())
    alone = CliRunner().invoke(app, [*args, "--completion-length", "48"])
    assert alone.exit_code == 2 and "needs --grpo-generations" in " ".join(alone.output.split())


def test_experts_profile_command(tiny_model_dirs, tmp_path):
    from typer.testing import CliRunner

    from thinktune.cli import app

    args = ["experts", "profile", "--model", str(tiny_model_dirs["qwen3_moe"]), "-o", str(tmp_path), "--samples", "4"]
    r = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert (tmp_path / "expert_usage.png").stat().st_size > 1000
    usage = json.loads((tmp_path / "expert_usage.json").read_text())
    assert usage["samples"] == 4 and len(usage["gate_share"]) == 2
    dense = CliRunner().invoke(
        app, ["experts", "profile", "--model", str(tiny_model_dirs["llama"]), "-o", str(tmp_path)]
    )
    assert dense.exit_code == 2
