"""`thinktune eval --compare`: base vs an adapter on the same set → report.md, report.json, PNG charts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model
from rich.console import Console
from transformers import AutoModelForCausalLM

from thinktune.config import load_config
from thinktune.errors import UserError
from thinktune.eval.compare import compare_models


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(out)
    return out


def _cfg(model_dir):
    return load_config(None, [f"model.name_or_path={model_dir}", "eval.max_samples=3", "eval.max_new_tokens=6"])


def test_compare_writes_reports_and_charts(tiny_model_dirs, adapter_dir, tmp_path):
    out = tmp_path / "cmp"
    results = compare_models(_cfg(tiny_model_dirs["llama"]), ["base", str(adapter_dir)], out, Console(quiet=True))
    assert list(results) == ["base", f"{adapter_dir.parent.name}/adapter"]
    adapter = list(results)[1]
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"base", adapter} and report["results"]["base"]["n"] == 3
    md = (out / "report.md").read_text()
    assert "| base |" in md and f"| {adapter} |" in md
    for png in ("metrics.png", "think_length.png"):
        assert (out / "charts" / png).read_bytes()[:4] == b"\x89PNG"
    # paired against the first candidate, task by task
    paired = report["paired_against"][adapter]
    gained = sum(not x["correct"] and y["correct"] for x, y in zip(*report["samples"].values(), strict=True))
    assert report["paired_against"]["reference"] == "base" and paired["n"] == 3 and paired["gained"] == gained
    assert "## Paired against base" in md
    # The adapter really changes the model: held-out losses differ.
    assert report["results"]["base"]["loss"] != report["results"][adapter]["loss"]


def test_compare_needs_two_candidates(tiny_model_dirs, tmp_path):
    with pytest.raises(UserError, match="at least two"):
        compare_models(_cfg(tiny_model_dirs["llama"]), ["base"], tmp_path, Console(quiet=True))


def thinktune_eval(args: list[str]) -> subprocess.CompletedProcess:
    """`thinktune eval ARGS` in a subprocess from the repo root, wide console."""
    return subprocess.run(
        [sys.executable, "-m", "thinktune", "eval", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        env={"COLUMNS": "200", **os.environ},
    )


def test_cli_compare_prints_table(tiny_model_dirs, adapter_dir, tmp_path):
    r = thinktune_eval(
        [
            "--model",
            str(tiny_model_dirs["llama"]),
            "--compare",
            "base",
            "--compare",
            str(adapter_dir),
            "--max-samples",
            "2",
            "--set",
            "eval.max_new_tokens=4",
            "-o",
            str(tmp_path),
        ]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "comparison" in r.stdout and "adapter" in r.stdout


def test_cli_eval_with_robustness_efficiency_and_metrics(tiny_model_dirs, tmp_path):
    r = thinktune_eval(
        [
            "--model",
            str(tiny_model_dirs["llama"]),
            "--max-samples",
            "3",
            "--set",
            "eval.max_new_tokens=3",
            "--metrics",
            "exact_match,token_f1",
            "--robustness",
            "--efficiency",
            "-o",
            str(tmp_path),
        ]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"robustness", "efficiency"} <= set(report)
    assert "token_f1" in report["headline"]
    assert "## robustness" in (tmp_path / "report.md").read_text()
