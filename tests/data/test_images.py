"""Records with images: OpenAI image content parts and LLaMA-Factory's multimodal format (`<image>` placeholders +
an `images` list) become canonical records with absolute image paths; every bad image or pairing is one reject line
naming file, line and the problem; a text-only model refuses image records instead of training the placeholders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from thinktune.data.formats import RecordError
from thinktune.data.reading import read_records, write_records
from thinktune.data.render import tokenize_record


def picture(path: Path, size=(32, 24), fmt="PNG", color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, fmt)
    return path


def user(content):
    return {"role": "user", "content": content}


def answer(text="It is red."):
    return {"role": "assistant", "content": text, "reasoning_content": "The picture is one colour."}


@pytest.fixture
def data(tmp_path) -> Path:
    picture(tmp_path / "img" / "red.png")
    picture(tmp_path / "img" / "blue.jpg", fmt="JPEG", color=(10, 10, 220))
    (tmp_path / "img" / "notes.png").write_text("not an image")
    good = tmp_path / "img" / "big.jpg"
    picture(good, size=(256, 256), fmt="JPEG")
    (tmp_path / "img" / "cut.jpg").write_bytes(good.read_bytes()[:400])
    picture(tmp_path / "img" / "dot.png", size=(1, 1))
    rows = [
        # 1 OpenAI content parts, a relative path
        {"messages": [user([{"type": "image_url", "image_url": {"url": "img/red.png"}},
                            {"type": "text", "text": "What colour is this?"}]), answer()]},
        # 2 LLaMA-Factory mllm_demo.json: placeholders + images
        {"messages": [user("<image><image>Which is blue?"), answer("The second.")],
         "images": ["img/red.png", "img/blue.jpg"]},
        # 3 ShareGPT with images
        {"conversations": [{"from": "human", "value": "<image>Colour?"}, {"from": "gpt", "value": "Blue."}],
         "images": ["img/blue.jpg"]},
        # 4 two placeholders, one image
        {"messages": [user("<image> and <image>?"), answer()], "images": ["img/red.png"]},
        # 5 missing file
        {"messages": [user("<image>?"), answer()], "images": ["img/missing.png"]},
        # 6 not an image
        {"messages": [user("<image>?"), answer()], "images": ["img/notes.png"]},
        # 7 a URL
        {"messages": [user([{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}]), answer()]},
        # 8 both ways at once
        {"messages": [user([{"type": "image", "image": "img/red.png"}]), answer()], "images": ["img/red.png"]},
        # 9 truncated JPEG
        {"messages": [user("<image>?"), answer()], "images": ["img/cut.jpg"]},
        # 10 one pixel
        {"messages": [user("<image>?"), answer()], "images": ["img/dot.png"]},
    ]  # fmt: skip
    path = tmp_path / "vl.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_image_records_and_their_rejects(data, tmp_path):
    loaded = read_records(str(data))
    assert [r["meta"]["line"] for r in loaded.records] == [1, 2, 3]
    first, second, third = loaded.records
    assert first["images"] == [str((tmp_path / "img" / "red.png").resolve())]
    assert first["messages"][0]["content"] == "<image>What colour is this?"
    assert second["images"] == [str((tmp_path / "img" / n).resolve()) for n in ("red.png", "blue.jpg")]
    assert third["messages"][0]["content"] == "<image>Colour?" and len(third["images"]) == 1
    assert "images" not in first["meta"] and "images" not in second["meta"]
    reasons = {r.line: r.reason for r in loaded.rejects}
    assert all(r.file == str(data) for r in loaded.rejects)
    assert "2 <image> placeholder(s) in the messages for 1 image(s)" in reasons[4]
    assert "file not found" in reasons[5] and "img/missing.png" in reasons[5]
    assert "not a readable image" in reasons[6]
    assert "not URLs" in reasons[7]
    assert "both as content parts and in the 'images' list" in reasons[8]
    assert "not a readable image" in reasons[9]
    assert "too small" in reasons[10]
    assert len(reasons) == 7


def test_image_records_write_back_unchanged(data, tmp_path):
    records = read_records(str(data)).records
    out = tmp_path / "out" / "again.jsonl"
    write_records(records, out)  # absolute paths: they read back from anywhere
    again = read_records(str(out)).records
    assert [r["images"] for r in again] == [r["images"] for r in records]
    assert [r["messages"] for r in again] == [r["messages"] for r in records]


def test_a_text_only_model_refuses_image_records(data, tiny_tokenizer):
    rec = read_records(str(data)).records[0]
    with pytest.raises(RecordError, match="images train with a vision-language model"):
        tokenize_record(tiny_tokenizer, rec)


def test_image_parts_outside_conversations_are_refused():
    from thinktune.data.formats import message

    with pytest.raises(RecordError, match="SFT conversations only"):
        message("user", [{"type": "image_url", "image_url": {"url": "a.png"}}], where="prompt[0]: ")
