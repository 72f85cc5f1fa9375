"""Server limits on live servers: API key (401), body size (413), full queue (429), timeout (504), draining (503)."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

HELLO = [{"role": "user", "content": "Hello, world!"}]


def chat(server, **kw) -> httpx.Response:
    body = {"messages": HELLO, "max_tokens": 4, **kw}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)


def test_api_key(start_server):
    server = start_server(api_key="s3cret-key")
    ok = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret-key", max_retries=0)
    assert ok.chat.completions.create(model=ok.models.list().data[0].id, messages=HELLO, max_tokens=2).choices
    for key in ("wrong-key", "s3cret-key-but-longer", "s3cret-ke"):
        bad = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            bad.models.list()
        assert e.value.body["code"] == "invalid_api_key"
    r = chat(server)  # no Authorization header at all
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.url + "/health").status_code == 200  # probes and scrapers need no key
    assert httpx.get(server.url + "/metrics").status_code == 200


def test_body_size_limit(start_server):
    server = start_server(max_request_bytes=2000, adapters=False)
    big = {"messages": [{"role": "user", "content": "x" * 5000}]}
    r = httpx.post(server.url + "/v1/chat/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: the limit is enforced while reading
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}]}'

    r = httpx.post(server.url + "/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert chat(server).status_code == 200  # small bodies still pass


def fire(server, n: int, **kw) -> list[httpx.Response]:
    """n requests at once (threads released together)."""
    barrier, results = threading.Barrier(n), [None] * n

    def one(i: int) -> None:
        barrier.wait()
        results[i] = chat(server, **kw)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_full_queue_is_429_with_retry_after(start_server):
    server = start_server(max_queue=1, max_batch_size=1, adapters=False)
    results = fire(server, 6, max_tokens=40, ignore_eos=True)  # one runs, one waits, the rest are refused
    codes = sorted(r.status_code for r in results)
    assert 429 in codes and 200 in codes and set(codes) <= {200, 429}, codes
    refused = next(r for r in results if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "queue_full"
    assert chat(server).status_code == 200  # the queue drained


def test_timeout_is_504_and_frees_the_model(start_server):
    server = start_server(request_timeout=0.5, adapters=False)
    started = time.monotonic()
    r = chat(server, max_tokens=400, ignore_eos=True)  # 400 decoding steps take well over 0.5 s
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
    assert time.monotonic() - started < 5
    engine = server.server.config.app.state.engine  # the abandoned row stops (test_serve_engine counts the steps)
    deadline = time.monotonic() + 5
    while engine.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.running == 0


def test_stream_timeout_after_first_token_ends_the_stream_with_an_error(start_server):
    server = start_server(request_timeout=0.5, adapters=False)
    body = {"messages": HELLO, "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        text = r.read().decode()
    if r.status_code == 504:  # a very slow machine: not even the first token in time
        return
    assert r.status_code == 200
    assert '"timeout_error"' in text and text.endswith("data: [DONE]\n\n")


def test_draining_answers_503(start_server):
    server = start_server(adapters=False)
    lifecycle = server.lifecycle
    lifecycle.draining = True
    try:
        r = chat(server)
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        assert httpx.get(server.url + "/health").status_code == 503  # load balancers stop routing here
    finally:
        lifecycle.draining = False
    assert chat(server).status_code == 200


def test_shutdown_finishes_running_requests(start_server):
    server = start_server(adapters=False)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", chat(server, max_tokens=60, ignore_eos=True)))
    t.start()
    time.sleep(0.2)
    server.stop()  # as SIGTERM: stop accepting, drain, exit
    t.join(30)
    assert result["r"].status_code == 200
    assert result["r"].json()["usage"]["completion_tokens"] == 60
    assert not server.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health")
