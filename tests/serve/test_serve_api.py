"""The OpenAI-compatible API on a live server, driven by the real `openai` client (tiny random Qwen3 + a LoRA)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

HELLO = [{"role": "user", "content": "Tom has 5 apples. He buys 3 more apples. How many apples does Tom have now?"}]


def client(server, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=60)


def chat_text(server, model: str, **kw) -> str:
    kw = {"max_tokens": 12, "temperature": 0, **kw}
    return client(server).chat.completions.create(model=model, messages=HELLO, **kw).choices[0].message.content


def test_health_and_models(tiny_server):
    health = httpx.get(tiny_server.url + "/health").json()
    assert health["status"] == "ok"
    ids = [m.id for m in client(tiny_server).models.list().data]
    assert ids == [tiny_server.base_name, tiny_server.adapter]


def test_chat_non_stream(tiny_server):
    r = client(tiny_server).chat.completions.create(
        model=tiny_server.base_name, messages=HELLO, max_tokens=10, temperature=0
    )
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 10 and r.usage.prompt_tokens > 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_matches_non_stream(tiny_server):
    whole = chat_text(tiny_server, tiny_server.base_name, max_tokens=16)
    stream = client(tiny_server).chat.completions.create(
        model=tiny_server.base_name,
        messages=HELLO,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.strip() == whole.strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 16


def test_raw_sse_framing(tiny_server):
    body = {"model": tiny_server.base_name, "messages": HELLO, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", tiny_server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in events[:-1])


def test_completions(tiny_server):
    c = client(tiny_server)
    r = c.completions.create(model=tiny_server.base_name, prompt="The quick brown fox", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and len(r.choices) == 1 and r.usage.completion_tokens <= 8
    many = c.completions.create(
        model=tiny_server.base_name, prompt=["Hello", "The sum of"], max_tokens=4, temperature=0
    )
    assert [ch.index for ch in many.choices] == [0, 1]
    streamed = c.completions.create(
        model=tiny_server.base_name, prompt="The quick brown fox", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(ch.choices[0].text for ch in streamed) == r.choices[0].text


def test_stop_string_cuts_the_answer(tiny_server):
    c = client(tiny_server)
    full = c.completions.create(model=tiny_server.base_name, prompt="Hello", max_tokens=24, temperature=0).choices[0]
    stop = full.text[len(full.text) // 2 :][:3]
    if not stop.strip():
        pytest.skip("greedy output of the random model is blank in the middle")
    cut = c.completions.create(model=tiny_server.base_name, prompt="Hello", max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].text == full.text[: full.text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_seed_reproduces_a_sampled_answer(tiny_server):
    kw = {"temperature": 1.0, "top_p": 0.9, "max_tokens": 12}
    a = chat_text(tiny_server, tiny_server.base_name, seed=123, extra_body={"top_k": 50}, **kw)
    b = chat_text(tiny_server, tiny_server.base_name, seed=123, extra_body={"top_k": 50}, **kw)
    assert a == b


def test_adapter_changes_the_output_and_base_stays_base(tiny_server):
    base = chat_text(tiny_server, tiny_server.base_name, max_tokens=16)
    tuned = chat_text(tiny_server, tiny_server.adapter, max_tokens=16)
    assert tuned != base
    assert chat_text(tiny_server, tiny_server.base_name, max_tokens=16) == base  # the adapter was switched off again


def test_unknown_model_is_404(tiny_server):
    with pytest.raises(openai.NotFoundError) as e:
        chat_text(tiny_server, "gpt-nope")
    error = e.value.body
    assert error["code"] == "model_not_found" and "gpt-nope" in error["message"] and error["type"]


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 2}, None),
        ({"stop": [""]}, "stop"),
        ({"max_tokens": 401}, "max_tokens"),  # above max_tokens_limit
        ({"logprobs": True}, None),
    ],
)
def test_bad_parameters_are_400(tiny_server, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        chat_text(tiny_server, tiny_server.base_name, **extra)
    error = e.value.body
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"] == param


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"messages": []}',
        b'{"messages": [{"role": "wizard", "content": "hi"}]}',
        b'{"messages": "hi"}',
        b'{"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": {"tokenize": true}}',
    ],
)
def test_malformed_requests_are_400_without_traceback(tiny_server, body):
    r = httpx.post(tiny_server.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert set(r.json()["error"]) >= {"message", "type", "code"}
    assert "Traceback" not in r.text


def test_body_must_be_json(tiny_server):
    url = tiny_server.url + "/v1/chat/completions"
    r = httpx.post(url, content=b'{"messages": [{"role": "user", "content": "hi"}]}')  # no Content-Type
    assert r.status_code == 400 and "application/json" in r.json()["error"]["message"]
    r = httpx.post(url, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("invalid JSON body")


def test_prompt_longer_than_the_context_is_400(tiny_server):
    long = [{"role": "user", "content": "apples " * 600}]  # the tiny model's context is 512 tokens
    with pytest.raises(openai.BadRequestError) as e:
        client(tiny_server).chat.completions.create(model=tiny_server.base_name, messages=long, max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded"


def test_unknown_route_is_openai_shaped_404(tiny_server):
    r = httpx.get(tiny_server.url + "/v1/engines")
    assert r.status_code == 404 and "error" in r.json()


def test_metrics(tiny_server):
    chat_text(tiny_server, tiny_server.base_name, max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        chat_text(tiny_server, "missing")
    text = httpx.get(tiny_server.url + "/metrics").text
    assert 'thinktune_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert 'thinktune_requests_total{endpoint="/v1/chat/completions",status="404"}' in text
    assert "thinktune_request_duration_seconds_bucket" in text
    assert "thinktune_queue_depth 0.0" in text
    assert f'thinktune_generated_tokens_total{{model="{tiny_server.base_name}"}}' in text
    assert "thinktune_batch_size_count" in text


# -- reasoning_content, with a model whose output is known -------------------------------------------------------


def test_reasoning_content_non_stream(scripted_server):
    r = client(scripted_server).chat.completions.create(model="scripted", messages=HELLO)
    message = r.choices[0].message
    assert message.reasoning_content == "I add 2 and 3 to get 5."
    assert message.content == "The answer is \\boxed{5}."
    assert r.choices[0].finish_reason == "stop"


def test_reasoning_content_stream(scripted_server):
    chunks = list(client(scripted_server).chat.completions.create(model="scripted", messages=HELLO, stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    kinds = "".join("r" if getattr(d, "reasoning_content", None) else "c" if d.content else "" for d in deltas)
    assert kinds and kinds == "r" * kinds.count("r") + "c" * kinds.count("c")  # all thinking, then all answer
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "I add 2 and 3 to get 5."
    assert "".join(d.content or "" for d in deltas) == "The answer is \\boxed{5}."
    assert not any("think>" in (d.content or "") for d in deltas)


@pytest.mark.parametrize(
    "extra", [{"chat_template_kwargs": {"enable_thinking": False}}, {"enable_thinking": False}], ids=["kwargs", "top"]
)
def test_thinking_off_strips_reasoning_and_reaches_the_template(scripted_server, extra):
    c = client(scripted_server)
    on = c.chat.completions.create(model="scripted", messages=HELLO)
    off = c.chat.completions.create(model="scripted", messages=HELLO, extra_body=extra)
    assert off.choices[0].message.reasoning_content is None
    assert off.choices[0].message.content == "The answer is \\boxed{5}."
    assert off.usage.prompt_tokens > on.usage.prompt_tokens  # the template pre-filled an empty think block
    stream = c.chat.completions.create(model="scripted", messages=HELLO, stream=True, extra_body=extra)
    deltas = [ch.choices[0].delta for ch in stream]
    assert not any(getattr(d, "reasoning_content", None) for d in deltas)
    assert "".join(d.content or "" for d in deltas) == "The answer is \\boxed{5}."
