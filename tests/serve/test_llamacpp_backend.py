"""`--backend llamacpp`: the tiny Qwen3 exported to GGUF, served by llama.cpp behind the app, asked by openai."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import openai
import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'thinktune[llama]')")

from thinktune.config import ModelConfig, validate  # noqa: E402
from thinktune.data.render import render_prompt  # noqa: E402
from thinktune.errors import UserError  # noqa: E402
from thinktune.export import ExportOptions, run_export  # noqa: E402
from thinktune.export import llama_cpp_check as lcc  # noqa: E402
from thinktune.export.gguf_lora import write_gguf_lora  # noqa: E402
from thinktune.export.source import base_config  # noqa: E402
from thinktune.serve.llamacpp_backend import (  # noqa: E402
    LlamaCppEngine,
    choose_backend,
    find_gguf,
    load_served_gguf,
)
from thinktune.serve.server import BackgroundServer, build_app  # noqa: E402

PROMPTS = ["The answer is", "Once upon a time", "2 + 3 =", "hello world"]


@pytest.fixture(scope="module")
def tiny_gguf(tiny_base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gguf")
    record = run_export(ModelConfig(name_or_path=str(tiny_base)), "gguf", out, ExportOptions(gguf_type="f32"))
    return Path(record["artefact"])


def start(tiny_base, gguf, servers, api_key=None, **serve) -> BackgroundServer:
    raw = {"model": {"name_or_path": str(tiny_base)}, "serve": {"backend": "llamacpp", "max_tokens_limit": 200}}
    raw["serve"] |= serve | ({"api_key": api_key} if api_key else {})
    cfg = validate(raw)
    app, lifecycle, _ = build_app(cfg, "tiny", gguf=gguf, threads=1)
    server = BackgroundServer(app, lifecycle, request_timeout=cfg.serve.request_timeout).start()
    servers.append(server)
    return server


@pytest.fixture(scope="module")
def server(tiny_base, tiny_gguf):
    servers = []
    yield start(tiny_base, tiny_gguf, servers, max_batch_size=4)
    for s in servers:
        s.stop()


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def llama_alone(gguf: Path, ids: list[int], n: int) -> list[int]:
    with lcc.load(gguf, n_ctx=256) as llm:
        return lcc.greedy(llm, ids, n)


def test_greedy_completion_equals_llama_cpp_alone(client, tiny_gguf, tiny_base):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    ids = tokenizer(PROMPTS[0])["input_ids"]
    alone = llama_alone(tiny_gguf, ids, 24)
    out = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=24, temperature=0)
    assert out.choices[0].text == tokenizer.decode(alone[:24], skip_special_tokens=True)
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == len(alone)


def test_parallel_requests_answer_as_each_alone(client):
    """Four sequences decoded in the same llama_decode calls must not see each other's KV cache."""
    one = {p: client.completions.create(model="tiny", prompt=p, max_tokens=30, temperature=0) for p in PROMPTS}
    together: dict[str, str] = {}

    def ask(p: str) -> None:
        together[p] = client.completions.create(model="tiny", prompt=p, max_tokens=30, temperature=0).choices[0].text

    threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == {p: r.choices[0].text for p, r in one.items()}
    assert len(set(together.values())) > 1  # the prompts lead somewhere different


def test_a_shared_prompt_prefix_is_decoded_once_per_slot(server, client, tiny_base, tiny_gguf):
    """A slot keeps its last request's KV cache: the next prompt that starts the same way decodes only the rest, and
    answers exactly as llama.cpp alone does from an empty cache."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    engine = server.server.config.app.state.engine
    prompt = "Once upon a time there was a small model that"
    first = client.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0)
    before = engine.prompt_tokens_reused
    again = client.completions.create(model="tiny", prompt=prompt + " liked", max_tokens=16, temperature=0)
    assert engine.prompt_tokens_reused - before >= first.usage.prompt_tokens - 1
    alone = llama_alone(tiny_gguf, tokenizer(prompt + " liked")["input_ids"], 16)
    assert again.choices[0].text == tokenizer.decode(alone[:16], skip_special_tokens=True)


def test_requests_sharing_a_long_prefix_copy_it_and_answer_as_each_alone(tiny_base, tiny_gguf):
    """Requests arriving together with the same long beginning (a system prompt): one slot decodes it, the others copy
    its KV entries (llama_memory_seq_cp) and decode only their own rest; every answer equals llama.cpp alone's."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    servers = []
    server = start(tiny_base, tiny_gguf, servers, max_batch_size=4)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        engine = server.server.config.app.state.engine
        head = "You are a careful assistant who answers in short sentences and checks every step twice. "
        prompts = [head + p for p in PROMPTS]
        answers: dict[str, str] = {}

        def ask(p: str) -> None:
            answers[p] = client.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0).choices[0].text

        threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        shared = len(tokenizer(head)["input_ids"]) - 2
        assert engine.prompt_tokens_reused >= 3 * shared, engine.prompt_tokens_reused
        for p in prompts:
            alone = llama_alone(tiny_gguf, tokenizer(p)["input_ids"], 12)
            assert answers[p] == tokenizer.decode(alone[:12], skip_special_tokens=True), p
    finally:
        for s in servers:
            s.stop()


def test_chat_prompt_is_thinktunes_rendering(client, tiny_base):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    for thinking in (True, False):
        rendered = render_prompt(tokenizer, messages, None, enable_thinking=thinking)
        out = client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=12, temperature=0,
            extra_body={"chat_template_kwargs": {"enable_thinking": thinking}},
        )  # fmt: skip
        assert out.usage.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        assert out.choices[0].finish_reason in ("stop", "length")
        message = out.choices[0].message
        assert (message.content or "") + (getattr(message, "reasoning_content", None) or "") != ""


def test_streaming_matches_the_whole_answer(client):
    whole = client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=20, temperature=0)
    stream = client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=20, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream) == whole.choices[0].text
    messages = [{"role": "user", "content": "hi"}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0,
                                                 stream=True))  # fmt: skip
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert content == (chat.choices[0].message.content or "")
    assert reasoning == (getattr(chat.choices[0].message, "reasoning_content", None) or "")


def test_stop_string_cuts_the_answer(client):
    full = client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=40, temperature=0).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    out = client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=40, temperature=0, stop=[stop])
    assert out.choices[0].text == full[: full.index(stop)]
    assert out.choices[0].finish_reason == "stop"


def test_seed_reproduces_a_sampled_answer(client):
    ask = dict(model="tiny", prompt=PROMPTS[3], max_tokens=20, temperature=1.0, top_p=0.9)
    a = client.completions.create(**ask, seed=7).choices[0].text
    b = client.completions.create(**ask, seed=7).choices[0].text
    others = {client.completions.create(**ask, seed=s).choices[0].text for s in range(8, 12)}
    assert a == b and others - {a}


def test_full_queue_is_429_and_metrics_count(tiny_base, tiny_gguf):
    servers = []
    try:
        server = start(tiny_base, tiny_gguf, servers, max_batch_size=1, max_queue=1)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        errors, done = [], []

        def ask() -> None:
            try:
                client.completions.create(model="tiny", prompt="x", max_tokens=200, temperature=0,
                                          extra_body={"ignore_eos": True})  # fmt: skip
                done.append(1)
            except openai.RateLimitError as e:
                errors.append(e)

        threads = [threading.Thread(target=ask) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors and done, (len(errors), len(done))
        assert errors[0].response.headers["Retry-After"].isdigit()
        metrics = httpx.get(server.url + "/metrics").text
        assert 'status="429"' in metrics
    finally:
        for s in servers:
            s.stop()


def test_api_key_is_required(tiny_base, tiny_gguf):
    servers = []
    try:
        server = start(tiny_base, tiny_gguf, servers, api_key="sesame")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=server.url + "/v1", api_key="sesame", max_retries=0)
        assert good.completions.create(model="tiny", prompt="a", max_tokens=3).usage.completion_tokens >= 1
    finally:
        for s in servers:
            s.stop()


def test_auto_picks_llamacpp_only_with_a_gguf(tiny_gguf, tmp_path):
    found = find_gguf(str(tiny_gguf.parent))
    assert found == tiny_gguf
    chosen, why = choose_backend(found)
    assert chosen == "llamacpp" and str(tiny_gguf) in why  # this machine has no CUDA GPU
    assert choose_backend(find_gguf(str(tmp_path)))[0] == "transformers"
    run = tmp_path / "run"
    (run / "export" / "gguf").mkdir(parents=True)
    (run / "export" / "gguf" / "model.gguf").write_bytes(tiny_gguf.read_bytes())
    assert find_gguf("unused", run_dir=run) == run / "export" / "gguf" / "model.gguf"


def test_no_gguf_and_bad_adapters_are_one_line(tiny_base, tiny_gguf, tmp_path):
    cfg = validate({"model": {"name_or_path": str(tiny_base)}, "serve": {"backend": "llamacpp"}})
    with pytest.raises(UserError, match="serves a GGUF"):
        load_served_gguf(cfg)
    cfg = validate({"model": {"name_or_path": str(tiny_base)}, "serve": {"adapters": {"a": str(tmp_path / "no")}}})
    with pytest.raises(UserError, match="serve.adapters.a: .* neither a LoRA .gguf file nor an adapter directory"):
        load_served_gguf(cfg, tiny_gguf)
    cfg = validate({"model": {"name_or_path": str(tiny_base)}, "serve": {"adapters": {"a": str(tiny_base)}}})
    with pytest.raises(UserError, match="not a PEFT adapter directory"):
        load_served_gguf(cfg, tiny_gguf)
    cfg = validate({"model": {"name_or_path": str(tiny_base)}, "serve": {"adapters": {"a": str(tiny_gguf)}}})
    with pytest.raises(UserError, match="llama.cpp refuses adapter 'a'") as e:  # a model, not a LoRA file
        LlamaCppEngine(load_served_gguf(cfg, tiny_gguf), max_batch_size=1)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def lora_file(tiny_base, tiny_adapter, tmp_path_factory) -> Path:
    """The PEFT adapter as a llama.cpp LoRA file, written once by the exporter's writer."""
    config = base_config(ModelConfig(name_or_path=str(tiny_base)))
    out = tmp_path_factory.mktemp("lora") / "tuned-lora-f32.gguf"
    write_gguf_lora(tiny_adapter, config, out, "f32")
    return out


@pytest.fixture(scope="module")
def adapter_client(tiny_base, tiny_gguf, tiny_adapter, lora_file):
    """The base GGUF with two adapters: a PEFT folder (converted at start-up) and a LoRA .gguf file as it is."""
    servers = []
    server = start(tiny_base, tiny_gguf, servers, max_batch_size=4,
                   adapters={"tuned": str(tiny_adapter), "tuned-file": str(lora_file)})  # fmt: skip
    yield openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    for s in servers:
        s.stop()


def test_adapter_answers_as_llama_cpp_with_its_lora_file(adapter_client, tiny_base, tiny_gguf, lora_file):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    ids = tokenizer(PROMPTS[0])["input_ids"]
    with lcc.load(tiny_gguf, 256, lora_file) as llm:
        alone = lcc.greedy(llm, ids, 24)
    expected = tokenizer.decode(alone[:24], skip_special_tokens=True)
    answers = {
        name: adapter_client.completions.create(model=name, prompt=PROMPTS[0], max_tokens=24, temperature=0)
        for name in ("tuned", "tuned-file", "tiny")
    }
    assert answers["tuned"].choices[0].text == expected
    assert answers["tuned-file"].choices[0].text == expected
    assert answers["tiny"].choices[0].text != expected  # the base is served without the adapter
    assert {m.id for m in adapter_client.models.list()} == {"tiny", "tuned", "tuned-file"}


def test_base_and_adapter_requests_together_answer_as_each_alone(adapter_client):
    """Sequences of the base and of an adapter in the same context: each step decodes them with their own LoRA."""
    asks = [(m, p) for m in ("tiny", "tuned") for p in PROMPTS]
    alone = {
        (m, p): adapter_client.completions.create(model=m, prompt=p, max_tokens=20, temperature=0).choices[0].text
        for m, p in asks
    }
    together: dict[tuple[str, str], str] = {}

    def ask(m: str, p: str) -> None:
        out = adapter_client.completions.create(model=m, prompt=p, max_tokens=20, temperature=0)
        together[(m, p)] = out.choices[0].text

    threads = [threading.Thread(target=ask, args=a) for a in asks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    assert all(alone[("tiny", p)] != alone[("tuned", p)] for p in PROMPTS)


def test_engine_is_the_apps_engine(server):
    assert isinstance(server.server.config.app.state.engine, LlamaCppEngine)


def test_cli_without_an_export_is_one_line(run_dir):
    from typer.testing import CliRunner

    from thinktune.cli import app

    result = CliRunner().invoke(app, ["serve", "--run-dir", str(run_dir), "--backend", "llamacpp"])
    assert result.exit_code != 0
    assert "thinktune export --run-dir" in result.output and "Traceback" not in result.output


def test_cli_auto_serves_the_runs_gguf_with_llamacpp(run_dir, tiny_gguf, tmp_path):
    """`thinktune serve --run-dir R --backend auto` as a real process: says why it picked llamacpp, serves the export
    under the run's name, and drains on SIGTERM."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.serve.test_serve_cli import ROOT, free_port

    (run_dir / "export" / "gguf").mkdir(parents=True)
    (run_dir / "export" / "gguf" / "tiny.gguf").write_bytes(tiny_gguf.read_bytes())
    port, log_path = free_port(), tmp_path / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "thinktune", "serve", "--run-dir", str(run_dir), "--port", str(port)]
            + ["--backend", "auto", "--threads", "1", "--log-level", "warning"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        try:
            url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 90
            while True:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                try:
                    if httpx.get(url + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
            client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
            assert [m.id for m in client.models.list().data] == ["tiny-run"]
            out = client.chat.completions.create(
                model="tiny-run", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
            assert out.usage.completion_tokens >= 1
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) in (0, -signal.SIGTERM)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "backend: llamacpp (CPU only" in log_path.read_text()
