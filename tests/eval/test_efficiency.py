"""Efficiency numbers at batch 1 and batch N on a tiny model: every key present and the numbers coherent."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from thinktune.data.render import render_prompt
from thinktune.eval.efficiency import measure_efficiency

QUESTIONS = [
    "Tom has 5 apples. He buys 3 more apples. How many apples does Tom have now?",
    "There are 7 days in a week. How many days are in 3 weeks?",
    "What is 9 squared?",
    "A train travels 60 miles per hour for 2 hours. How far does it travel?",
]


@pytest.fixture(scope="module")
def llama(tiny_model_dirs):
    model_dir = tiny_model_dirs["llama"]
    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def prompts(llama):
    _, tok = llama
    return [render_prompt(tok, [{"role": "user", "content": q}], None) for q in QUESTIONS]


def test_batch_1_and_batch_n(llama, prompts):
    model, tok = llama
    report = measure_efficiency(model, tok, prompts, max_new_tokens=8)
    assert report["batch_sizes"] == [1, 4] and [r["batch_size"] for r in report["results"]] == [1, 4]
    assert report["device"] == "cpu" and report["memory_source"] == "cpu_peak_rss" and report["requests"] == 4
    for r in report["results"]:
        for name in ("ttft_s", "latency_s"):
            assert 0 < r[f"{name}_p50"] <= r[f"{name}_p95"] <= r[f"{name}_p99"]
        assert 4 <= r["generated_tokens"] <= 4 * 8 and r["tokens_per_s"] > 0
        assert r["peak_memory_bytes"] > 0 and r["peak_rss_delta_bytes"] >= 0 and r["rss_bytes"] > 0
    batch_n = report["results"][1]
    # One batch of 4: every request waits for the same batch.
    assert batch_n["latency_s_p50"] == batch_n["latency_s_p99"] == batch_n["wall_s"]


def test_explicit_batch_sizes_and_bad_input(llama, prompts):
    model, tok = llama
    report = measure_efficiency(model, tok, prompts[:3], max_new_tokens=2, batch_sizes=(2, 2, 3))
    assert report["batch_sizes"] == [2, 3] and [r["requests"] for r in report["results"]] == [3, 3]
    with pytest.raises(ValueError):
        measure_efficiency(model, tok, [], max_new_tokens=2)
    with pytest.raises(ValueError):
        measure_efficiency(model, tok, prompts, max_new_tokens=2, batch_sizes=(0,))
