"""Speculative decoding (serve.draft_model, serve.prompt_lookup) through the real server, the real `openai` client and
the CLI: greedy answers equal plain decoding's; several tokens per step still stream, stop, count and cancel right.

The served model is the tiny random Qwen3; its draft is the tiny random Llama (same tokenizer, other weights), or the
Qwen3 itself (every draft accepted: each step keeps several tokens). The chat template opens a think block, as R1's
does, so answers go through the reasoning_content split.
"""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.serve.conftest import ADAPTER
from tests.test_cli_run import thinktune
from tests.tiny_models import build_tiny_model
from thinktune.config import validate
from thinktune.serve.adapters import load_served_model
from thinktune.serve.app import create_app
from thinktune.serve.engine import Engine, Finished, GenerationRequest, TextDelta
from thinktune.serve.sampling import SamplingParams
from thinktune.serve.server import BackgroundServer

R1_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
QUESTIONS = [
    "Tom has 5 apples. He buys 3 more apples. How many apples does Tom have now?",
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "Sara had 20 dollars. She spent 8 dollars on a book. How much money does she have left?",
]
KINDS = {
    "plain": {},
    "draft": {"draft_model": "llama"},  # another model with the same tokenizer
    "self-draft": {"draft_model": "qwen3"},  # accepts every draft
    "lookup": {"prompt_lookup": 4},
}


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def servers(tiny_model_dirs):
    """One server per kind of decoding, all on the tiny Qwen3."""
    started = {}
    try:
        for kind, serve in KINDS.items():
            if "draft_model" in serve:
                serve = {"draft_model": str(tiny_model_dirs[serve["draft_model"]])}
            cfg = validate(
                {
                    "model": {"name_or_path": str(tiny_model_dirs["qwen3"]), "chat_template": R1_TEMPLATE},
                    "serve": {"max_tokens_limit": 400, **serve},
                }
            )
            served = load_served_model(
                cfg.model, {}, "tiny", None, None, cfg.serve.draft_model, cfg.serve.prompt_lookup
            )
            started[kind] = BackgroundServer(create_app(served, cfg.serve)).start()
        yield started
    finally:
        for server in started.values():
            server.stop()


def answer(server, question: str, **kw) -> tuple[dict, str, dict]:
    kw = {"max_tokens": 48, "temperature": 0, **kw}
    r = client(server).chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}], **kw)
    m = r.choices[0].message
    reply = {"content": m.content or None, "reasoning_content": getattr(m, "reasoning_content", None) or None}
    return reply, r.choices[0].finish_reason, r.usage.model_dump()


def streamed(server, question: str, **kw) -> tuple[dict, str, dict]:
    kw = {"max_tokens": 48, "temperature": 0, **kw}
    chunks = list(
        client(server).chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": question}],
            stream=True,
            stream_options={"include_usage": True},
            **kw,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reply = {
        "content": "".join(d.content or "" for d in deltas) or None,
        "reasoning_content": "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) or None,
    }
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return reply, finish[0], chunks[-1].usage.model_dump()


def metric(server, name: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.parametrize("kind", ["draft", "self-draft", "lookup"])
def test_greedy_answers_equal_plain_decoding(servers, kind):
    for question in QUESTIONS:
        plain = answer(servers["plain"], question)
        assert plain[0]["reasoning_content"], "the template opens a think block: the answer is reasoning"
        assert answer(servers[kind], question) == plain, question
        assert streamed(servers[kind], question) == plain, question


def test_drafts_are_counted_and_accepted(servers):
    for kind in ("draft", "self-draft", "lookup"):
        answer(servers[kind], QUESTIONS[1], max_tokens=64)
    for kind in ("self-draft", "lookup"):  # the Qwen3 drafting for itself is always right; the fox sentence repeats
        drafted = metric(servers[kind], "thinktune_draft_tokens_total")
        accepted = metric(servers[kind], "thinktune_draft_tokens_accepted_total")
        assert drafted > 0 and 0 < accepted <= drafted, kind
    assert metric(servers["self-draft"], "thinktune_draft_tokens_accepted_total") >= 0.9 * metric(
        servers["self-draft"], "thinktune_draft_tokens_total"
    )


@pytest.mark.parametrize("kind", ["self-draft", "lookup"])
def test_stop_strings_and_max_tokens_inside_a_multi_token_step(servers, kind):
    question = QUESTIONS[2]
    whole, _, _ = answer(servers["plain"], question, max_tokens=64)
    text = whole["reasoning_content"]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    expected = answer(servers["plain"], question, max_tokens=64, stop=[stop])
    assert expected[1] == "stop" and text.startswith(expected[0]["reasoning_content"])
    assert stop not in expected[0]["reasoning_content"]
    for get in (answer, streamed):
        assert get(servers[kind], question, max_tokens=64, stop=[stop]) == expected
    for n in (1, 5, 7):
        reply, finish, usage = answer(servers[kind], question, max_tokens=n)
        assert usage["completion_tokens"] == n and finish == "length"
        assert reply == answer(servers["plain"], question, max_tokens=n)[0]


def test_requests_arriving_together_run_one_at_a_time_and_all_answer(servers):
    expected = [answer(servers["plain"], q)[0] for q in QUESTIONS]
    got: dict[int, dict] = {}

    def ask(i: int) -> None:
        got[i] = answer(servers["self-draft"], QUESTIONS[i])[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(QUESTIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [got[i] for i in range(len(QUESTIONS))] == expected
    assert metric(servers["self-draft"], 'thinktune_batch_size_bucket{le="1.0"}') == metric(
        servers["self-draft"], "thinktune_batch_size_count"
    )


def test_sampling_is_reproducible_by_seed(servers):
    for kind in ("draft", "lookup"):
        a = answer(servers[kind], QUESTIONS[0], temperature=0.8, top_p=0.9, seed=7)
        b = answer(servers[kind], QUESTIONS[0], temperature=0.8, top_p=0.9, seed=7)
        assert a == b and a[2]["completion_tokens"] > 0


def test_a_cancelled_request_stops_generating(servers):
    """The engine alone: a request cancelled after its first text stops within a step or two."""
    served = servers["self-draft"].server.config.app.state.served
    engine = Engine(served, max_batch_size=8)
    assert engine.max_batch_size == 1
    events, done = [], threading.Event()
    request: GenerationRequest

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, TextDelta):
            request.cancel()
        if isinstance(event, Finished):
            done.set()

    forwards = []
    hook = served.model.register_forward_pre_hook(lambda *_: forwards.append(1))
    prompt = served.tokenizer(QUESTIONS[0])["input_ids"]
    request = GenerationRequest(prompt, SamplingParams(300, temperature=0, ignore_eos=True), emit)
    try:
        engine.start()
        engine.submit(request)
        engine.stop(timeout=120)
    finally:
        hook.remove()
    assert not done.is_set()  # nobody listens to a cancelled request: no Finished
    assert len([e for e in events if isinstance(e, TextDelta)]) == 1
    assert 1 <= len(forwards) <= 3  # of ~150 verification passes for 300 tokens


def test_chat_cli_answers_equal_plain_decoding(tiny_model_dirs):
    model = str(tiny_model_dirs["qwen3"])
    base = ["chat", "--model", model, "-p", QUESTIONS[1], "--max-new-tokens", "40"]
    plain = thinktune(*base)
    assert plain.returncode == 0, plain.stderr
    for extra in (["--draft-model", str(tiny_model_dirs["llama"])], ["--prompt-lookup", "4"]):
        r = thinktune(*base, *extra)
        assert r.returncode == 0, r.stderr
        assert r.stdout == plain.stdout and r.stdout.strip()


@pytest.fixture(scope="module")
def other_vocab_model(tmp_path_factory):
    """A tiny model whose tokenizer has one token more than the served model's."""
    out = build_tiny_model("llama", tmp_path_factory.mktemp("other_vocab") / "llama", seed=3)
    tok = AutoTokenizer.from_pretrained(out)
    tok.add_tokens(["<|extra|>"])
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("command", ["serve", "chat"])
def test_a_draft_with_another_vocabulary_is_one_line(tiny_model_dirs, other_vocab_model, command):
    args = ["--model", str(tiny_model_dirs["qwen3"]), "--draft-model", str(other_vocab_model)]
    args += ["--port", "1"] if command == "serve" else ["-p", "hi"]
    r = thinktune(command, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]  # after the target's loading bar
    assert len(errors) == 1, r.stderr
    assert "another tokenizer vocabulary" in errors[0] and "'<|extra|>' is id 512 there and absent here" in errors[0]


@pytest.mark.parametrize(
    "args, says",
    [
        (["--draft-model", "x", "--prompt-lookup", "3"], "set one"),
        (["--prompt-lookup", "0"], "prompt_lookup"),
        (["--backend", "vllm", "--prompt-lookup", "3"], "transformers backend"),
    ],
)
def test_conflicting_settings_are_one_line(tiny_model_dirs, args, says):
    r = thinktune("serve", "--model", str(tiny_model_dirs["qwen3"]), *args)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and says in lines[0], r.stderr


def test_config_file_takes_the_settings(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(json.dumps({"serve": {"prompt_lookup": 6}}))
    from thinktune.config import load_config

    assert load_config(path).serve.prompt_lookup == 6 and load_config(path).serve.speculative


def test_an_adapter_answers_as_without_speculative_decoding(tiny_server, tiny_base, tiny_adapter):
    """Prompt lookup over a PEFT model: the adapter's greedy answers, the base's with the adapter disabled."""
    cfg = validate({"model": {"name_or_path": str(tiny_base)}, "serve": {"max_tokens_limit": 400, "prompt_lookup": 4}})
    served = load_served_model(cfg.model, {ADAPTER: str(tiny_adapter)}, prompt_lookup=4)
    with BackgroundServer(create_app(served, cfg.serve)) as server:
        for model in (ADAPTER, str(tiny_base)):
            for question in QUESTIONS[:2]:
                messages = [{"role": "user", "content": question}]
                got, want = (
                    client(s).chat.completions.create(model=model, messages=messages, max_tokens=32, temperature=0)
                    for s in (server, tiny_server)
                )
                assert got.choices[0].message.content == want.choices[0].message.content, (model, question)
