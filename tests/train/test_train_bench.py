"""The training benchmark (bench/train_throughput.py) runs end to end on a tiny model: HF Trainer + PEFT and
thinktune's fast path train the same samples, and the report has every figure the README table needs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import train_throughput  # noqa: E402


def test_bench_compares_hf_trainer_and_thinktune(tiny_model_dirs, tmp_path):
    out = tmp_path / "bench.json"
    rows = train_throughput.main(
        [
            "--model",
            str(tiny_model_dirs["llama"]),
            "--samples",
            "16",
            "--min-length",
            "8",
            "--max-length",
            "64",
            "--variants",
            "hf_trainer",
            "thinktune_fast",
            "--out",
            str(out),
            "--timeout",
            "600",
        ]
    )
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"hf_trainer", "thinktune_fast"}
    for r in rows:
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and r["peak_mb"] > 0 and 0 < r["mfu"] < 5
    hf, fast = by_name["hf_trainer"], by_name["thinktune_fast"]
    # Same samples, same schedule: both paths took the same number of optimizer steps (16 samples / batch 8).
    assert len(hf["runs"][0]["step_losses"]) == len(fast["runs"][0]["step_losses"]) == 2
    report = json.loads(out.read_text())
    assert "hf_trainer" in report["table"] and out.with_suffix(".png").is_file()


def test_random_shape_model_is_built_once_with_the_bundled_tokenizer(tmp_path, monkeypatch):
    from transformers import AutoConfig, AutoTokenizer

    shape = dict(train_throughput.RANDOM_SHAPES["qwen3-0.6b"])
    shape.update(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    )
    monkeypatch.setitem(train_throughput.RANDOM_SHAPES, "small-qwen3", shape)
    out = train_throughput.random_model("small-qwen3", tmp_path / "m")
    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "qwen3" and config.vocab_size == 151936 and config.num_hidden_layers == 2
    assert AutoTokenizer.from_pretrained(out).chat_template
    mtime = (out / "config.json").stat().st_mtime
    assert train_throughput.random_model("small-qwen3", out) == out and (out / "config.json").stat().st_mtime == mtime
