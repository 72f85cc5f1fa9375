"""Tool calling through the server: request messages → canonical messages, generated text → `tool_calls` (whole and
streamed, Qwen3 and DeepSeek syntax), and live round trips with the `openai` client over a model whose output is
known, rendered with the real Qwen3 chat template."""

from __future__ import annotations

import json
import random
from pathlib import Path

import openai
import pytest

from thinktune.config import ServeConfig, validate
from thinktune.serve import vllm_backend
from thinktune.serve.app import create_app
from thinktune.serve.protocol import ApiError, ChatCompletionRequest, canonical_messages
from thinktune.serve.reply import ReplyStream, whole_reply
from thinktune.serve.server import BackgroundServer

QWEN3_TEMPLATE = Path(__file__).resolve().parents[3] / "shared" / "templates" / "qwen3.jinja"

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}
LYON = {"name": "get_weather", "arguments": {"city": "Lyon", "unit": "°C"}}


def hermes(call: dict) -> str:
    return f"<tool_call>\n{json.dumps(call, ensure_ascii=False)}\n</tool_call>"


def deepseek(*calls: dict) -> str:
    args = [json.dumps(c["arguments"], ensure_ascii=False) for c in calls]
    body = "".join(
        f"<｜tool▁call▁begin｜>function<｜tool▁sep｜>{c['name']}\n```json\n{a}\n```<｜tool▁call▁end｜>"
        for c, a in zip(calls, args, strict=True)
    )
    return f"<｜tool▁calls▁begin｜>{body}<｜tool▁calls▁end｜>"


THINK = "<think>\nThe user asks for the weather, so I call the tool.\n</think>\n\n"
REASONING = "The user asks for the weather, so I call the tool."

# (generated text, tools given, engine's reason) → (reasoning, content, calls, finish_reason)
REPLIES = [
    pytest.param(THINK + hermes(PARIS), True, "stop", REASONING, None, [PARIS], "tool_calls", id="qwen3-call"),
    pytest.param(
        THINK + "Let me look that up.\n" + hermes(PARIS) + "\n" + hermes(LYON),
        True,
        "stop",
        REASONING,
        "Let me look that up.",
        [PARIS, LYON],
        "tool_calls",
        id="qwen3-text-and-two-calls",
    ),  # fmt: skip
    pytest.param(
        hermes(PARIS) + "\nThen I will answer.",
        True,
        "stop",
        None,
        "Then I will answer.",
        [PARIS],
        "tool_calls",
        id="qwen3-text-after-the-call",
    ),  # fmt: skip
    pytest.param(THINK + deepseek(PARIS), True, "stop", REASONING, None, [PARIS], "tool_calls", id="deepseek-call"),
    pytest.param(
        "I will check both.\n\n" + deepseek(PARIS, LYON),
        True,
        "stop",
        None,
        "I will check both.",
        [PARIS, LYON],
        "tool_calls",
        id="deepseek-two-calls",
    ),  # fmt: skip
    pytest.param(THINK + "It is sunny.", True, "stop", REASONING, "It is sunny.", [], "stop", id="tools-but-no-call"),
    pytest.param("Is 3 < 4? Yes <3", True, "stop", None, "Is 3 < 4? Yes <3", [], "stop", id="angle-brackets"),
    pytest.param(
        '<tool_call>\n{"name": "get_weather", "arguments": {city: Paris}}\n</tool_call>',
        True,
        "stop",
        None,
        '<tool_call>\n{"name": "get_weather", "arguments": {city: Paris}}\n</tool_call>',
        [],
        "stop",
        id="broken-json-stays-content",
    ),  # fmt: skip
    pytest.param(
        'Sure.\n<tool_call>\n{"name": "get_wea',
        True,
        "length",
        None,
        'Sure.\n<tool_call>\n{"name": "get_wea',
        [],
        "length",
        id="cut-off-call-stays-content",
    ),  # fmt: skip
    pytest.param(hermes(PARIS), False, "stop", None, hermes(PARIS), [], "stop", id="no-tools-no-parsing"),
]


def as_canonical(message: dict) -> list[dict]:
    return [
        {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
        for c in message.get("tool_calls", [])
    ]


@pytest.mark.parametrize("text,tools,engine_reason,reasoning,content,calls,reason", REPLIES)
def test_whole_reply(text, tools, engine_reason, reasoning, content, calls, reason):
    message, finish = whole_reply(text, engine_reason, tools=tools)
    assert (message["reasoning_content"], message["content"], as_canonical(message), finish) == (
        reasoning,
        content if content is not None or not calls else None,
        calls,
        reason,
    )
    for call in message.get("tool_calls", []):
        assert call["id"].startswith("call_") and call["type"] == "function"
        assert isinstance(call["function"]["arguments"], str)


@pytest.mark.parametrize("text,tools,engine_reason,reasoning,content,calls,reason", REPLIES)
@pytest.mark.parametrize("seed", range(6))
def test_streamed_reply_adds_up_to_the_whole(text, tools, engine_reason, reasoning, content, calls, reason, seed):
    rng, stream, deltas, i = random.Random(seed), ReplyStream(tools=tools), [], 0
    while i < len(text):
        step = 1 if seed == 0 else rng.randint(1, 7)  # seed 0: one character at a time
        deltas += stream.feed(text[i : i + step])
        i += step
    last, finish = stream.finish(engine_reason)
    deltas += last
    assert "".join(d.get("reasoning_content", "") for d in deltas) == (reasoning or "")
    assert "".join(d.get("content", "") for d in deltas) == (content or "")
    streamed_calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert [c["index"] for c in streamed_calls] == list(range(len(calls)))
    assert as_canonical({"tool_calls": streamed_calls}) == calls and finish == reason
    if calls:  # no piece of a call's syntax ever reaches the client as content
        assert not any("<tool" in d.get("content", "") or "｜" in d.get("content", "") for d in deltas)
        assert all("tool_calls" in d for d in deltas[len(deltas) - len(calls) :])  # the calls come last


def test_thinking_off_drops_reasoning_but_keeps_the_calls():
    message, finish = whole_reply(THINK + hermes(PARIS), "stop", thinking=False, tools=True)
    assert message["reasoning_content"] is None and as_canonical(message) == [PARIS] and finish == "tool_calls"


def test_a_call_inside_the_thinking_is_not_a_call():
    message, finish = whole_reply(f"<think>\nmaybe {hermes(PARIS)}\n</think>\n\nNo tool needed.", "stop", tools=True)
    assert message["content"] == "No tool needed." and "tool_calls" not in message and finish == "stop"


# -- request messages → canonical messages ------------------------------------------------------------------------

ASSISTANT_CALL = {
    "role": "assistant",
    "content": None,
    "reasoning_content": "I should call get_weather.",
    "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ],
}
HISTORY = [
    {"role": "developer", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    ASSISTANT_CALL,
    {"role": "tool", "tool_call_id": "call_1", "content": "18°C, sunny"},
]


def request(messages: list[dict], **kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": messages, **kw})


def test_canonical_messages():
    assert canonical_messages(request(HISTORY).messages) == [
        {"role": "system", "content": "Be brief.", "reasoning": None},
        {"role": "user", "content": "Weather in Paris?", "reasoning": None},
        {"role": "assistant", "content": "", "reasoning": "I should call get_weather.", "tool_calls": [PARIS]},
        {"role": "tool", "content": "18°C, sunny", "reasoning": None},
    ]


def with_call(**function) -> dict:
    return {**ASSISTANT_CALL, "tool_calls": [{"id": "call_1", "type": "function", "function": function}]}


@pytest.mark.parametrize(
    "messages,match",
    [
        ([HISTORY[1], with_call(name="get_weather", arguments="{city: Paris}")], "arguments .* is not JSON"),
        ([HISTORY[1], with_call(name="get_weather", arguments="[1, 2]")], "must be a JSON object"),
        ([HISTORY[1], with_call(arguments="{}")], "needs a 'name'"),
        ([HISTORY[1], {"role": "tool", "tool_call_id": "call_1", "content": "18°C"}], "must follow an assistant"),
        ([*HISTORY[1:3], {"role": "user", "content": "?"}, HISTORY[3]], "must follow an assistant"),
        ([*HISTORY[1:3], {"role": "tool", "tool_call_id": "call_9", "content": "x"}], "answers none of"),
        ([{"role": "user", "content": "hi", "tool_calls": ASSISTANT_CALL["tool_calls"]}], "only assistant"),
    ],
    ids=["not-json", "not-an-object", "no-name", "tool-first", "tool-after-user", "unknown-id", "user-calls"],
)
def test_bad_tool_messages_are_one_400_line(messages, match):
    with pytest.raises(ApiError, match=match) as e:
        canonical_messages(request(messages).messages)
    assert e.value.status == 400 and e.value.param == "messages" and "\n" not in e.value.message


def test_tool_choice_none_hides_the_tools():
    assert request(HISTORY[1:2], tools=TOOLS).template_tools == TOOLS
    assert request(HISTORY[1:2], tools=TOOLS, tool_choice="auto").template_tools == TOOLS
    assert request(HISTORY[1:2], tools=TOOLS, tool_choice="none").template_tools is None
    assert request(HISTORY[1:2], tools=[]).template_tools is None


# -- live: the openai client against the server, over a model that writes a known tool call -----------------------

SCRIPT = THINK + "Let me look that up.\n" + hermes(LYON)


def tool_server(make_scripted, text: str):
    """A server over a model that writes `text`, with the real Qwen3 chat template; `.served` to read its prompts."""
    served = make_scripted(text=text, template=QWEN3_TEMPLATE.read_text())
    served.model.config.max_position_embeddings = 4096  # the tools make long prompts for the tiny tokenizer
    server = BackgroundServer(create_app(served, ServeConfig(max_tokens_limit=300)))
    server.served = served
    return server


@pytest.fixture(scope="module")
def qwen3_server(make_scripted):
    with tool_server(make_scripted, SCRIPT) as server:
        yield server


@pytest.fixture(scope="module")
def deepseek_server(make_scripted):
    with tool_server(make_scripted, THINK + deepseek(PARIS, LYON)) as server:
        yield server


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def last_prompt(server) -> str:
    tokenizer = server.served.tokenizer
    return tokenizer.decode([i for i in server.served.model.prompts[-1] if i != tokenizer.pad_token_id])


def test_tools_and_tool_history_reach_the_qwen3_template(qwen3_server):
    r = client(qwen3_server).chat.completions.create(model="scripted", messages=HISTORY, tools=TOOLS)
    prompt = last_prompt(qwen3_server)
    assert "<tools>\n" + json.dumps(TOOLS[0]) + "\n</tools>" in prompt  # the tools, in the system turn
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\n18°C, sunny\n</tool_response>" in prompt
    assert "<think>\nI should call get_weather.\n</think>" in prompt  # Qwen3 keeps reasoning after the last query
    assert prompt.endswith("<|im_start|>assistant\n")

    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me look that up."
    assert choice.message.reasoning_content == REASONING
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == LYON["arguments"]


def test_the_documented_loop_sends_the_reply_back(qwen3_server):
    """docs/serving.md: the response message goes back as it is (an SDK object), then the tool's result."""
    c, messages = client(qwen3_server), [HISTORY[1]]
    r = c.chat.completions.create(model="scripted", messages=messages, tools=TOOLS)
    call = r.choices[0].message.tool_calls[0]
    messages += [r.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": "12°C"}]
    again = c.chat.completions.create(model="scripted", messages=messages, tools=TOOLS)
    assert again.choices[0].finish_reason == "tool_calls"
    prompt = last_prompt(qwen3_server)
    assert '{"name": "get_weather", "arguments": {"city": "Lyon", "unit": "°C"}}' in prompt
    assert "<tool_response>\n12°C\n</tool_response>" in prompt and REASONING in prompt


def test_streamed_tool_calls(qwen3_server):
    stream = client(qwen3_server).chat.completions.create(
        model="scripted", messages=HISTORY[:2], tools=TOOLS, tool_choice="auto", stream=True
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks]
    assert "".join(d.content or "" for d in deltas) == "Let me look that up."
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == REASONING
    [call] = [t for d in deltas for t in d.tool_calls or []]
    assert (call.index, call.type, call.function.name) == (0, "function", "get_weather")
    assert call.id.startswith("call_") and json.loads(call.function.arguments) == LYON["arguments"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]
    assert not any("<tool" in (d.content or "") for d in deltas)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_deepseek_syntax_round_trip(deepseek_server, stream):
    r = client(deepseek_server).chat.completions.create(
        model="scripted", messages=HISTORY[1:2], tools=TOOLS, stream=stream
    )
    if stream:
        chunks = list(r)
        calls = [t.function for c in chunks for t in c.choices[0].delta.tool_calls or []]
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
        assert content == "" and finish == ["tool_calls"]
    else:
        assert r.choices[0].message.content is None and r.choices[0].finish_reason == "tool_calls"
        calls = [t.function for t in r.choices[0].message.tool_calls]
    assert [{"name": f.name, "arguments": json.loads(f.arguments)} for f in calls] == [PARIS, LYON]


@pytest.mark.parametrize("extra", [{"tool_choice": "none", "tools": TOOLS}, {}], ids=["tool_choice-none", "no-tools"])
def test_without_tools_the_call_is_plain_content(qwen3_server, extra):
    r = client(qwen3_server).chat.completions.create(model="scripted", messages=HISTORY[1:2], **extra)
    assert "# Tools" not in last_prompt(qwen3_server)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content == "Let me look that up.\n" + hermes(LYON)


@pytest.mark.parametrize(
    "kw,param",
    [
        ({"messages": [HISTORY[1], with_call(name="get_weather", arguments="{city")]}, "messages"),
        ({"messages": [HISTORY[1], HISTORY[3]]}, "messages"),
        ({"messages": HISTORY[1:2], "tools": TOOLS, "tool_choice": "required"}, "tool_choice"),
        (
            {"messages": HISTORY[1:2], "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"messages": HISTORY[1:2], "tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools"),
    ],
    ids=["arguments-not-json", "tool-without-call", "tool_choice-required", "tool_choice-named", "tool-without-name"],
)
def test_bad_tool_requests_are_400(qwen3_server, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        client(qwen3_server).chat.completions.create(model="scripted", **kw)
    error = e.value.body
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"] and "\n" not in error["message"]


# -- --backend vllm: the same tool calls need vLLM's parser for the template's syntax -----------------------------


@pytest.mark.parametrize(
    "template,parser",
    [
        (QWEN3_TEMPLATE.read_text(), "hermes"),
        ("{{ '<｜tool▁calls▁begin｜>' }}", "deepseek_v3"),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", None),
    ],
    ids=["qwen3", "deepseek", "chatml"],
)
def test_vllm_tool_call_parser(template, parser):
    assert vllm_backend.tool_call_parser(template) == parser


def test_vllm_args_enable_tools_for_a_qwen3_template(tiny_base):
    plain = vllm_backend.vllm_args(validate({"model": {"name_or_path": str(tiny_base)}}))
    assert "--tool-call-parser" not in plain and "--enable-auto-tool-choice" not in plain  # ChatML: no tool syntax
    cfg = validate({"model": {"name_or_path": str(tiny_base), "chat_template": QWEN3_TEMPLATE.read_text()}})
    args = vllm_backend.vllm_args(cfg)
    assert "--enable-auto-tool-choice" in args and args[args.index("--tool-call-parser") + 1] == "hermes"


def test_thinking_default_follows_the_runs_data_thinking(make_scripted):
    """A run trained with `data.thinking: off` is served in non-thinking mode unless a request turns thinking on."""
    served = make_scripted(text="Hello.", template=QWEN3_TEMPLATE.read_text())
    served.thinking = False
    with BackgroundServer(create_app(served, ServeConfig(max_tokens_limit=50))) as server:
        server.served = served
        chat = client(server).chat.completions
        chat.create(model="scripted", messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
        assert last_prompt(server).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        chat.create(
            model="scripted", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
            extra_body={"chat_template_kwargs": {"enable_thinking": True}},
        )  # fmt: skip
        assert last_prompt(server).endswith("<|im_start|>assistant\n")
