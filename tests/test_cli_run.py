"""The CLI end to end: train / eval / chat on a tiny model, and the quickstart path on the bundled SmolLM2 (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def thinktune(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "thinktune", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )


TINY = [
    "--set",
    "data.max_train_samples=16",
    "--set",
    "train.max_steps=2",
    "--set",
    "train.batch_size=4",
    "--set",
    "eval.max_samples=3",
    "--set",
    "eval.max_new_tokens=6",
    "--set",
    "data.max_length=512",
]


def test_train_then_eval_and_chat_with_adapter(tiny_model_dirs, tmp_path):
    model = str(tiny_model_dirs["qwen3"])
    out = tmp_path / "run"
    r = thinktune("train", "--set", f"model.name_or_path={model}", "-o", str(out), *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "accuracy" in r.stdout and str(out) in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adapter_dir"] == str(out / "adapter")

    r = thinktune(
        "eval",
        "--model",
        model,
        "--adapter",
        str(out / "adapter"),
        "--max-samples",
        "3",
        "--set",
        "eval.max_new_tokens=6",
        "-o",
        str(tmp_path / "ev"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["headline"]["n"] == 3 and len(report["samples"]) == 3
    assert (tmp_path / "ev" / "report.md").read_text().startswith("# ")

    r = thinktune("chat", "--model", model, "--adapter", str(out / "adapter"), "-p", "2 + 2?", "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip()


def test_eval_rejects_a_non_adapter_directory(tiny_model_dirs, tmp_path):
    r = thinktune("eval", "--model", str(tiny_model_dirs["llama"]), "--adapter", str(tmp_path), "--max-samples", "1")
    assert r.returncode == 2
    assert "adapter_config.json" in r.stderr and "Traceback" not in r.stderr


def test_doctor_reports_versions():
    r = thinktune("doctor")
    assert "transformers" in r.stdout and "torch" in r.stdout
    assert r.returncode in (0, 1)


def test_doctor_reports_cpu_bf16_from_the_cpu_flags():
    import torch

    from thinktune.doctor import cpu_bf16_flags, run_checks

    flags = open("/proc/cpuinfo").read().split()
    assert cpu_bf16_flags() == [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    lines = [c for c in run_checks() if c.name == "cpu bf16"]
    if torch.cuda.is_available():  # training runs on the GPU: no CPU bf16 advice
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].ok
        assert lines[0].value.startswith("yes" if cpu_bf16_flags() else "no")


@pytest.mark.slow
def test_quickstart_path_on_bundled_smollm2(tmp_path):
    """The real model through the real CLI: conversion (cached), before/after eval, LoRA, reload via --adapter."""
    out = tmp_path / "smol"
    r = thinktune(
        "train",
        "-o",
        str(out),
        "--set",
        "data.max_train_samples=16",
        "--set",
        "train.max_steps=2",
        "--set",
        "eval.max_samples=4",
        "--set",
        "eval.max_new_tokens=24",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["model"] == "smollm2-135m-instruct" and s["before"]["n"] == 4 and s["after"]["n"] == 4
    assert s["paired"]["n"] == 4 and "before vs after on the same tasks" in r.stdout
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    r = thinktune("chat", "--adapter", str(out / "adapter"), "-p", "What is 12 + 7?", "--max-new-tokens", "24")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr[-3000:]
