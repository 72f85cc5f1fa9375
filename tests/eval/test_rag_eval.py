"""Evaluation with retrieval (data.rag / eval --rag-index): task prompts hold the retrieved passages, samples record
retrieved, gold and cited ids, and the headline reports retrieval recall@k and citation coverage."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from thinktune.config import EvalConfig, RagConfig
from thinktune.eval.runner import evaluate, rag_scores
from thinktune.eval.tasks import load_tasks
from thinktune.rag.index import open_index


@pytest.mark.parametrize(
    ("retrieved", "gold", "output", "recall", "coverage"),
    [
        (["C29", "C01"], ["C29"], "<think>[C29] says Ireland.</think>Ireland [C29].", 1.0, 1.0),
        (["C01", "C02"], ["C29"], "Ireland [C29].", 0.0, 1.0),  # cited from memory: covered, not retrieved
        (["C13", "C14"], ["C13", "C14"], "The hotline [C13].", 1.0, 0.5),
        (["C13#2"], ["C13"], "see [C13#2]", 1.0, 1.0),
        (["C01"], ["C29"], "Ireland.", 0.0, 0.0),
    ],
)
def test_rag_scores(retrieved, gold, output, recall, coverage):
    s = rag_scores({"k": len(retrieved), "retrieved": retrieved, "gold": gold}, output)
    assert (s["retrieval_recall"], s["citation_coverage"]) == (recall, coverage)


def test_without_gold_ids_only_the_ids_are_recorded():
    assert rag_scores({"k": 1, "retrieved": ["C01"], "gold": []}, "[C01]") == {
        "retrieved": ["C01"], "gold_ids": [], "cited": ["C01"],
    }  # fmt: skip


def test_tasks_hold_the_retrieved_passages(contracts_index):
    rag = RagConfig(index=str(contracts_index), k=3)
    tasks = load_tasks("bundled:contracts/test", rag=rag).records
    plain = load_tasks("bundled:contracts/test").records
    ix = open_index(contracts_index)
    for t, p in zip(tasks, plain, strict=True):
        question = p["prompt"][-1]["content"]
        ids = [h.chunk.id for h in ix.search(question, 3, "hybrid")]
        assert t["rag"] == {"k": 3, "retrieved": ids, "gold": p["meta"]["gold_ids"]}
        assert t["prompt"][-1]["content"].endswith(f"Question: {question}")
        assert all(f"[{i}] " in t["prompt"][-1]["content"] for i in ids)
        assert t["messages"][:-1] == t["prompt"] and t["messages"][-1] == p["messages"][-1]


def test_headline_reports_recall_and_citation_coverage(tiny_model_dirs, contracts_index):
    path = tiny_model_dirs["llama"]
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    rag = RagConfig(index=str(contracts_index), k=2)
    tasks = load_tasks("bundled:contracts/test", rag=rag).records
    result = evaluate(model, tok, tasks, EvalConfig(max_new_tokens=4, batch_size=10))
    h = result.headline()
    expected = sum(any(g in t["rag"]["retrieved"] for g in t["rag"]["gold"]) for t in tasks) / len(tasks)
    assert h["retrieval_recall@2"] == pytest.approx(expected) and 0 < expected <= 1
    assert h["rag_tasks"] == 10 and 0 <= h["citation_coverage"] <= 1
    assert all({"retrieved", "gold_ids", "cited"} <= s.keys() for s in result.samples)


def test_eval_cli_with_rag_index(tiny_model_dirs, contracts_index, tmp_path):
    from thinktune.cli import app

    args = ["eval", "--model", str(tiny_model_dirs["llama"]), "--data", "bundled:contracts/test", "--max-samples", "3"]
    args += ["--set", "eval.max_new_tokens=3", "-o", str(tmp_path / "ev"), "--rag-index", str(contracts_index)]
    r = CliRunner().invoke(app, [*args, "--rag-k", "2"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert r.exit_code == 0, r.output
    assert "retrieval_recall@2" in r.output and "citation_coverage" in r.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["headline"]["rag_tasks"] == 3 and len(report["samples"][0]["retrieved"]) == 2
    bad = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dirs["llama"]), "--rag-k", "2"])
    assert bad.exit_code == 2 and "--rag-k needs a rag index" in bad.output
