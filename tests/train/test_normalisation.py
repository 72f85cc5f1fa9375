"""Exact normalisation: a global batch trains alike however it is split into micro-batches and processes.

For every objective (SFT token mean; DPO pair mean; KTO answer mean; GRPO completion mean, completion-token mean and
Dr. GRPO's fixed divisor) the gradients of the first two optimizer steps — four items, then a short last group of
two — are compared between one process with batch 4, one process × accumulation 4 of batch 1, and two processes ×
accumulation 2 of batch 1 (gloo). See tests/train/normalisation.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.normalisation import OBJECTIVES, gradients

WORKER = Path(__file__).with_name("normalisation.py")
TOLERANCE = 1e-5


def max_difference(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> float:
    assert len(a) == len(b) == 2 and all(x.keys() == y.keys() for x, y in zip(a, b, strict=True))
    return max(float((x[k] - y[k]).abs().max()) for x, y in zip(a, b, strict=True) for k in x)


def two_processes(model_dir: Path, objective: str, out: Path) -> list[dict[str, torch.Tensor]]:
    root = Path(__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(port)]
    done = subprocess.run(
        [*cmd, str(WORKER), str(model_dir), objective, "1", "2", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_one_batch_accumulation_and_processes_give_the_same_gradient(tiny_model_dirs, tmp_path, objective):
    model_dir = tiny_model_dirs["llama"]
    whole = gradients(str(model_dir), objective, batch_size=4, accum=1)
    accumulated = gradients(str(model_dir), objective, batch_size=1, accum=4)
    assert any(float(g.abs().max()) > 1e-3 for g in whole[1].values())  # the short last group trains too
    split = two_processes(model_dir, objective, tmp_path / "grads.pt")
    print(
        f"{objective}: max |Δgrad| 1×accum 4 {max_difference(whole, accumulated):.1e}, "
        f"2 processes × accum 2 {max_difference(whole, split):.1e}"
    )
    assert max_difference(whole, accumulated) < TOLERANCE
    assert max_difference(whole, split) < TOLERANCE
