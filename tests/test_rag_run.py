"""A run with data.rag end to end on the tiny Qwen3: it trains on prompts with passages, its evaluations report
retrieval recall and citation coverage, and `serve --run-dir` retrieves from the run's own index (sources come back
through the real openai client)."""

from __future__ import annotations

import json

import openai

from tests.test_cli_run import thinktune
from thinktune.config import load_config
from thinktune.serve.server import BackgroundServer, build_app


def test_train_eval_and_serve_a_rag_run(tiny_model_dirs, contracts_index, tmp_path):
    out = tmp_path / "run"
    sets = [
        f"model.name_or_path={tiny_model_dirs['qwen3']}", "data.train=bundled:contracts/train",
        "data.test=bundled:contracts/test", f"data.rag.index={contracts_index}", "data.rag.k=2",
        "data.rag.distractors=1", "train.max_steps=2", "train.batch_size=4", "eval.max_samples=3",
        "eval.max_new_tokens=4", "data.max_length=1024",
    ]  # fmt: skip
    r = thinktune("train", "-o", str(out), *[a for s in sets for a in ("--set", s)])
    assert r.returncode == 0, r.stderr[-2000:]
    for when in ("before", "after"):
        report = json.loads((out / "eval" / f"{when}.json").read_text())
        assert report["headline"]["rag_tasks"] == 3 and 0 <= report["headline"]["retrieval_recall@2"] <= 1
        assert "citation_coverage" in report["headline"] and len(report["samples"][0]["retrieved"]) == 2

    cfg = load_config(out / "config.yaml", [f"serve.adapters={{run: {out / 'adapter'}}}"])
    assert cfg.data.rag.index == str(contracts_index)
    app, lifecycle, served = build_app(cfg)
    with BackgroundServer(app, lifecycle) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
        resp = client.chat.completions.create(
            model="run", messages=[{"role": "user", "content": "Which country's law applies?"}], max_tokens=3
        )
    assert len(resp.model_extra["sources"]) == 2
