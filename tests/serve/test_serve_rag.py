"""Retrieval in serving: `serve --rag-index` puts the passages for the last user message into the prompt (as training
does) and returns them as `sources`, read through the real openai client from a live server on the tiny Qwen3;
`chat --rag-index` does the same in the chat session and prints the sources."""

from __future__ import annotations

import openai
import pytest
from typer.testing import CliRunner

from thinktune.config import RagConfig, validate
from thinktune.data.render import render_prompt
from thinktune.rag.prompt import with_passages
from thinktune.rag.retrieval import Retrieval
from thinktune.serve.adapters import load_served_model
from thinktune.serve.app import create_app
from thinktune.serve.server import BackgroundServer

QUESTION = "Which country's law applies to the agreement?"
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


@pytest.fixture(scope="module")
def retrieval(contracts_index) -> Retrieval:
    return Retrieval.open(RagConfig(index=str(contracts_index), k=2))  # the tiny model reads 512 tokens


@pytest.fixture(scope="module")
def rag_server(tiny_base, retrieval):
    cfg = validate({"model": {"name_or_path": str(tiny_base)}, "serve": {"max_tokens_limit": 400}})
    served = load_served_model(cfg.model, {})
    with BackgroundServer(create_app(served, cfg.serve, retrieval=retrieval)) as server:
        server.served = served
        yield server


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_chat_completion_returns_the_sources_its_prompt_held(rag_server, retrieval):
    messages = [{"role": "user", "content": QUESTION}]
    resp = client(rag_server).chat.completions.create(model=str(rag_server.served.base_name), messages=messages,
                                                      max_tokens=4)  # fmt: skip
    sources = resp.model_extra["sources"]
    expected = retrieval.search(QUESTION)
    assert [s["id"] for s in sources] == [h.chunk.id for h in expected] and "C29" in [s["id"] for s in sources]
    assert sources[0].keys() == {"id", "doc", "score", "text"} and sources[0]["text"] == expected[0].chunk.text
    assert resp.to_dict()["sources"] == sources
    tok = rag_server.served.tokenizer
    canonical = [{"role": "user", "content": QUESTION, "reasoning": None}]
    prompt = render_prompt(tok, with_passages(canonical, [h.chunk for h in expected]), None, enable_thinking=True)
    assert resp.usage.prompt_tokens == len(tok(prompt, add_special_tokens=False)["input_ids"])  # the passages went in


def test_streaming_sends_the_sources_in_the_first_chunk(rag_server, retrieval):
    stream = client(rag_server).chat.completions.create(
        model=str(rag_server.served.base_name), messages=[{"role": "user", "content": QUESTION}], max_tokens=3,
        stream=True,
    )  # fmt: skip
    chunks = list(stream)
    assert [s["id"] for s in chunks[0].model_extra["sources"]] == [h.chunk.id for h in retrieval.search(QUESTION)]
    assert all("sources" not in (c.model_extra or {}) for c in chunks[1:])


def test_a_server_without_an_index_sends_no_sources(tiny_server):
    resp = client(tiny_server).chat.completions.create(
        model=tiny_server.base_name, messages=[{"role": "user", "content": QUESTION}], max_tokens=2
    )
    assert "sources" not in (resp.model_extra or {})


def test_chat_session_and_cli_use_the_index(tiny_base, contracts_index, tmp_path):
    from thinktune.cli import app

    args = ["chat", "--model", str(tiny_base), "--max-new-tokens", "3", "--rag-index", str(contracts_index)]
    result = CliRunner().invoke(app, [*args, "--rag-k", "2", "-p", QUESTION], env=ENV)
    assert result.exit_code == 0, result.output
    [line] = [x for x in result.output.splitlines() if x.startswith("sources: ")]
    assert line.count("[C") == 2 and "[C29]" in line
    missing = CliRunner().invoke(app, ["chat", "--model", str(tiny_base), "--rag-index", str(tmp_path), "-p", "x"])
    assert missing.exit_code == 2 and f"{tmp_path}: no rag index here" in missing.output
    served = CliRunner().invoke(app, ["serve", "--model", str(tiny_base), "--rag-index", str(tmp_path / "nope")])
    assert served.exit_code == 2 and "nope: no rag index here" in served.output
    vllm = ["serve", "--model", str(tiny_base), "--backend", "vllm", "--rag-index", str(contracts_index)]
    assert "without retrieval" in CliRunner().invoke(app, vllm).output
