"""Images through the API and `thinktune chat --image`, on the tiny random Qwen2.5-VL (real Qwen2 tokenizer): a
base64 data: URL sent by the real `openai` client reaches the model as pixels, usage counts its image tokens, image
and text requests share a batch, and what the server refuses (URLs it would have to fetch, undecodable images, images
for a text-only model) is a 400 that says why."""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from tests.tiny_models import build_tiny_model, build_tiny_vl_model
from thinktune.config import ModelConfig, ServeConfig
from thinktune.data.render import render_prompt
from thinktune.serve.adapters import load_served_model
from thinktune.serve.app import create_app
from thinktune.serve.engine import Engine, Finished, GenerationRequest, TextDelta
from thinktune.serve.sampling import SamplingParams
from thinktune.serve.server import BackgroundServer

ROOT = Path(__file__).parents[2]
TEMPLATES = ROOT.parent / "shared" / "templates"
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
RED, BLUE = (220, 20, 20), (20, 20, 220)
QUESTION = "Which colour is this?"


def png(colour: tuple[int, int, int], size: tuple[int, int] = (40, 32)):
    from PIL import Image

    return Image.new("RGB", size, colour)


def data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_message(url: str, text: str = QUESTION) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return [{"role": "user", "content": parts}]


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def ask(server, messages: list[dict], **kw):
    kw = {"max_tokens": 6, "temperature": 0, "extra_body": {"ignore_eos": True}, **kw}
    return client(server).chat.completions.create(model=server.name, messages=messages, **kw)


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory) -> Path:
    gguf = "deepseek-r1-distill-qwen.vocab.gguf"
    assert (TEMPLATES / gguf).is_file(), f"missing {TEMPLATES / gguf} (CI has ../shared beside the checkout)"
    return build_tiny_vl_model(tmp_path_factory.mktemp("vl") / "qwen2_5_vl", TEMPLATES, gguf)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    return build_tiny_model("qwen3", tmp_path_factory.mktemp("text") / "qwen3")


def served_app(model_dir: Path):
    served = load_served_model(ModelConfig(name_or_path=str(model_dir)), {})
    return served, create_app(served, ServeConfig(max_tokens_limit=64))


@pytest.fixture(scope="module")
def vl_server(vl_dir):
    served, app = served_app(vl_dir)
    with BackgroundServer(app) as server:
        server.name, server.served = str(vl_dir), served
        yield server


@pytest.fixture(scope="module")
def text_server(text_dir):
    served, app = served_app(text_dir)
    with BackgroundServer(app) as server:
        server.name, server.served = str(text_dir), served
        yield server


def test_an_image_reaches_the_model_and_usage_counts_its_tokens(vl_server):
    served, image = vl_server.served, png(RED)
    r = ask(vl_server, image_message(data_url(image)))
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6
    vision, tokenizer = served.vision, served.tokenizer
    messages = vision.messages([{"role": "user", "content": "<image>" + QUESTION, "reasoning": None}])
    expected = vision.prompt_ids(tokenizer, render_prompt(tokenizer, messages), [image])
    [n] = vision.tokens([image])
    assert n > 1 and r.usage.prompt_tokens == len(expected)
    text_only = ask(vl_server, [{"role": "user", "content": QUESTION}])
    image_text = len(tokenizer(vision.image_text, add_special_tokens=False)["input_ids"])
    assert r.usage.prompt_tokens - text_only.usage.prompt_tokens == image_text - 1 + n
    other = ask(vl_server, image_message(data_url(png(BLUE, (60, 60)))))
    assert other.choices[0].message.content != r.choices[0].message.content  # the pixels decide the answer


def test_streaming_with_an_image_matches_the_whole_answer(vl_server):
    messages = image_message(data_url(png(RED)))
    whole = ask(vl_server, messages)
    chunks = list(ask(vl_server, messages, stream=True, stream_options={"include_usage": True}))
    streamed = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    assert streamed.strip() == whole.choices[0].message.content.strip()
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_image_and_text_requests_share_a_batch(vl_dir):
    """Pixels concatenated in row order, left padding: each row answers as it does alone."""
    served, _ = served_app(vl_dir)
    vision, tokenizer = served.vision, served.tokenizer
    image = png(RED)
    prompt = render_prompt(
        tokenizer, vision.messages([{"role": "user", "content": "<image>Colour?", "reasoning": None}])
    )
    rows = [
        (vision.prompt_ids(tokenizer, prompt, [image]), vision.pixels([image])),
        (
            tokenizer(
                render_prompt(tokenizer, [{"role": "user", "content": "Hello, 2 + 2?", "reasoning": None}]),
                add_special_tokens=False,
            )["input_ids"],
            {},
        ),
    ]
    params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)

    def run(batch) -> tuple[list[str], list[int]]:
        sizes, texts, done = [], [""] * len(batch), threading.Semaphore(0)

        def emit(i):
            def on(event):
                if isinstance(event, TextDelta):
                    texts[i] += event.text
                elif isinstance(event, Finished):
                    done.release()

            return on

        engine = Engine(served, max_batch_size=4, on_batch=sizes.append)
        for i, (ids, pixels) in enumerate(batch):
            engine.submit(GenerationRequest(ids, params, emit(i), pixels=pixels))
        engine.start()
        for _ in batch:
            assert done.acquire(timeout=60)
        engine.stop(10)
        return texts, sizes

    together, sizes = run(rows)
    assert sizes == [2]
    assert together == [run([row])[0][0] for row in rows]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://example.com/cat.png", "messages[0]: the server is offline: send the image as a data: URL"),
        ("file:///tmp/cat.png", "messages[0]: an image must be a base64 data: URL"),
        ("data:image/png;base64,bm90IGFuIGltYWdl", "messages[0]: not a readable image"),
        ("data:image/png;base64,%%%", "messages[0]: the image's base64 does not decode"),
    ],
    ids=["https", "file", "not-an-image", "bad-base64"],
)
def test_refused_images_are_400_naming_the_message(vl_server, url, message):
    with pytest.raises(openai.BadRequestError) as e:
        ask(vl_server, image_message(url))
    assert e.value.status_code == 400 and e.value.body["message"].startswith(message)


def test_images_only_in_user_messages_and_image_tokens_need_images(vl_server):
    parts = [{"type": "image_url", "image_url": {"url": data_url(png(RED))}}]
    body = {
        "model": vl_server.name,
        "messages": [{"role": "system", "content": parts}, *image_message(data_url(png(RED)))],
    }
    r = httpx.post(vl_server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and "images go in user messages" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="is taken for an image"):  # a typed image token, no image
        ask(vl_server, [{"role": "user", "content": "<|vision_start|><|image_pad|><|vision_end|>hi"}])
    r = httpx.post(vl_server.url + "/v1/completions", json={"prompt": "<|image_pad|>", "max_tokens": 2}, timeout=60)
    assert r.status_code == 400 and "image tokens need images" in r.json()["error"]["message"]


def test_an_image_for_a_text_only_model_is_400(text_server):
    assert text_server.served.vision is None
    with pytest.raises(openai.BadRequestError) as e:
        ask(text_server, image_message(data_url(png(RED))))
    assert e.value.body["message"] == f"{text_server.name} is a text-only model: it takes no images"
    assert ask(text_server, [{"role": "user", "content": QUESTION}]).usage.completion_tokens == 6  # text still works


def test_chat_cli_sends_images_with_the_first_question(vl_dir, tmp_path, monkeypatch):
    import thinktune.serve.chat as chat
    from thinktune.cli import app

    png(RED).save(tmp_path / "red.png")
    calls = []
    real = chat.generate_batch

    def spy(model, tokenizer, prompts, *args, images=None, vision=None, **kw):
        calls.append((prompts[0], [list(i) for i in images]))
        return real(model, tokenizer, prompts, *args, images=images, vision=vision, **kw)

    monkeypatch.setattr(chat, "generate_batch", spy)
    monkeypatch.chdir(tmp_path)  # --image paths are relative to the working directory
    args = ["chat", "--model", str(vl_dir), "--image", "red.png", "--max-new-tokens", "3"]
    result = CliRunner().invoke(app, args, input="What colour?\nAnd now?\n\n", env=ENV)
    assert result.exit_code == 0, result.output
    image = str((tmp_path / "red.png").resolve())
    [(first, first_images), (second, second_images)] = calls
    assert first_images == second_images == [[image]]  # the conversation keeps its image
    assert first.count("<|vision_start|><|image_pad|><|vision_end|>What colour?") == 1
    assert second.count("<|image_pad|>") == 1


def test_chat_cli_refuses_images_for_a_text_only_model(text_dir, tmp_path):
    from thinktune.cli import app

    png(RED).save(tmp_path / "red.png")
    args = ["chat", "--model", str(text_dir), "--image", str(tmp_path / "red.png"), "-p", "colour?"]
    result = CliRunner().invoke(app, args, env=ENV)
    assert result.exit_code == 2
    assert "is a text-only model" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["chat", "--model", str(text_dir), "--image", "missing.png", "-p", "x"], env=ENV)
    assert result.exit_code == 2 and "file not found" in result.output
