"""bench/gpu_check.sh --dry-run: every step of the GPU check wired on the CPU (the CPU-capable parts run on a tiny
random model; every CUDA-only command stops with its one-line refusal), one JSON, exit 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_gpu_check_dry_run_wires_every_step(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "THINKTUNE_PYTHON": sys.executable},  # CI exports PYTHON for the venv's creation
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    steps = json.loads(out.read_text())["steps"]
    assert list(steps) == ["env", "sft", "levers", "qlora", "grpo", "serve", "planner"]
    assert all(s["status"] in ("ok", "wired") for s in steps.values()), steps
    assert {"hf_trainer", "thinktune_fast"} <= steps["sft"]["variants"].keys()
    assert "needs a CUDA GPU" in steps["qlora"]["refusal"]
    assert steps["grpo"]["hf"]["seconds_per_step"] > 0 and "vllm" in steps["grpo"]["vllm"]["refusal"]
    assert steps["serve"]["transformers"]["tokens_per_s"] > 0 and "vllm" in steps["serve"]["vllm"]["refusal"]
    assert steps["planner"]["predicted_gib"] > 0
    assert "step" in proc.stdout and "wrote" in proc.stdout
