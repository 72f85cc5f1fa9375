"""A vision-language model (a tiny random Qwen2.5-VL with the real Qwen2 tokenizer) loads through
AutoModelForImageTextToText and fine-tunes its language model on text: LoRA leaves the vision tower alone, packing
stays off (the model computes its own multimodal position ids), and the adapter loads back with PEFT. A model type
transformers knows neither as a causal LM nor as an image-text-to-text model is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_vl_model
from thinktune.config import DataConfig, MethodConfig, ModelConfig, TrainConfig
from thinktune.errors import ConfigError, DataError, ModelNotFoundError
from thinktune.methods import apply_method
from thinktune.models import load_pretrained

ROOT = Path(__file__).parents[2]
TEMPLATES = ROOT.parent / "shared" / "templates"


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory) -> Path:
    gguf = "deepseek-r1-distill-qwen.vocab.gguf"
    assert (TEMPLATES / gguf).is_file(), f"missing {TEMPLATES / gguf} (CI has ../shared beside the checkout)"
    return build_tiny_vl_model(tmp_path_factory.mktemp("vl") / "qwen2_5_vl", TEMPLATES, gguf)


def test_lora_adapts_the_language_model_only(vl_dir):
    model, tok, _ = load_pretrained(ModelConfig(name_or_path=str(vl_dir)))
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert model.config.get_text_config().pad_token_id == tok.pad_token_id
    peft = apply_method(model, MethodConfig(name="lora"))
    adapted = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert adapted and all(".language_model." in n for n in adapted)
    assert {n.split(".")[-4] for n in adapted} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def test_packing_is_off_for_models_with_their_own_position_ids(vl_dir):
    from thinktune.train.objectives.sft import resolve_levers

    model, _, _ = load_pretrained(ModelConfig(name_or_path=str(vl_dir)))
    assert resolve_levers(TrainConfig(), model).packing is False
    with pytest.raises(ConfigError, match="computes its own"):
        resolve_levers(TrainConfig(packing=True), model)


def train(sets: list[str]) -> subprocess.CompletedProcess:
    """`thinktune train --set ...` in a subprocess; it must succeed."""
    proc = subprocess.run(
        [sys.executable, "-m", "thinktune", "train", *[x for s in sets for x in ("--set", s)]],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_train_on_text_and_load_the_adapter_back(vl_dir, tmp_path):
    out = tmp_path / "run"
    sets = [f"model.name_or_path={vl_dir}", "data.max_train_samples=16", "train.max_steps=3", "train.batch_size=4",
            "train.learning_rate=1e-2", "eval.max_samples=4", "eval.max_new_tokens=8", f"output_dir={out}"]  # fmt: skip
    proc = train(sets)
    assert "packing off" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["after"]["loss"] < summary["before"]["loss"]
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    peft = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(vl_dir), out / "adapter")
    lora = [n for n, _ in peft.named_parameters() if "lora_" in n]
    assert lora and all(".language_model." in n for n in lora)


def test_an_unknown_kind_of_model_is_one_line(tmp_path):
    from transformers import T5Config

    T5Config(d_model=8, num_layers=1, num_heads=1, d_ff=8, vocab_size=10).save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="neither a causal language model nor an image-text-to-text"):
        from thinktune.models.loading import ModelSource, model_class

        model_class(ModelSource(tmp_path))


def colour_records(folder: Path, n: int = 12) -> Path:
    """Records asking the colour of a one-colour picture: the answer is in the image only."""
    from PIL import Image

    colours = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = list(colours)[i % 3]
        Image.new("RGB", (40 + 8 * (i % 4), 32), colours[name]).save(folder / "img" / f"{i}.png")
        rows.append({"messages": [{"role": "user", "content": "<image>Which colour is this?"},
                                  {"role": "assistant", "content": name}], "images": [f"img/{i}.png"]})  # fmt: skip
    path = folder / "colours.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_image_samples_carry_their_images_and_expand_the_image_token(vl_dir, tmp_path):
    from thinktune.data.prepare import prepare_training_data
    from thinktune.data.render import IGNORE
    from thinktune.models.vision import load_vision

    model, tok, _ = load_pretrained(ModelConfig(name_or_path=str(vl_dir)))
    vision = load_vision(model, vl_dir)
    data = prepare_training_data(DataConfig(train=[str(colour_records(tmp_path))], cache=False), tok, vision=vision)
    assert len(data.samples) == 12 and not data.rejects
    sample = data.samples[0]
    [path] = sample.images
    [n] = vision.tokens([path])
    pad = model.config.image_token_id
    assert sample.input_ids.count(pad) == n > 1  # one token per merged patch, none of them trained
    assert all(y == IGNORE for t, y in zip(sample.input_ids, sample.labels, strict=True) if t == pad)
    assert tok.decode([t for t, y in zip(sample.input_ids, sample.labels, strict=True) if y != IGNORE]).startswith(
        "red"
    )
    from thinktune.train.engine.speed import build_make_batch, model_inputs

    batch = build_make_batch(data.samples, TrainConfig(packing=False), tok.pad_token_id, vision)([0, 1])
    grids = batch["image_grid_thw"]
    assert grids.shape == (2, 3) and batch["pixel_values"].shape[0] == int(grids.prod(dim=1).sum())
    assert {"pixel_values", "image_grid_thw"} <= set(model_inputs(batch))  # what the model is called with
    with pytest.raises(DataError, match="images train with a vision-language model"):  # without vision
        prepare_training_data(DataConfig(train=[str(colour_records(tmp_path))], cache=False), tok)


def test_train_on_images(vl_dir, tmp_path):
    data = colour_records(tmp_path)
    out = tmp_path / "run"
    sets = [f"model.name_or_path={vl_dir}", f"data.train=[{data}]", "data.test=null", "train.max_steps=6",
            "train.batch_size=4", "train.learning_rate=2e-2", "train.warmup_ratio=0", "eval.before=false",
            "eval.after=false", f"output_dir={out}"]  # fmt: skip
    proc = train(sets)
    assert "12 training samples" in proc.stdout
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 6 and losses[-1] < losses[0]


def box_records(folder: Path, n: int = 4) -> Path:
    """Grounding tasks: where is the dark square on a light picture, answered as a box [x1, y1, x2, y2]."""
    from PIL import Image, ImageDraw

    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        im = Image.new("RGB", (56, 56), (240, 240, 240))
        box = [4 + 6 * i, 8, 28 + 6 * i, 32]
        ImageDraw.Draw(im).rectangle(box, fill=(10, 10, 10))
        im.save(folder / "img" / f"box{i}.png")
        rows.append({"messages": [{"role": "user", "content": "Where is the square? <image>"},
                                  {"role": "assistant", "content": json.dumps(box)}],
                     "images": [f"img/box{i}.png"], "answer": json.dumps(box)})  # fmt: skip
    path = folder / "boxes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_on_image_tasks(vl_dir, tmp_path):
    """`thinktune eval` on colour questions (word answers) and grounding tasks (box answers, IoU): the model sees
    the images (prompt tokens grow with them) and the report scores both."""
    colours = [json.loads(line) for line in colour_records(tmp_path, 3).read_text().splitlines()]
    tasks = tmp_path / "tasks.jsonl"
    lines = [json.dumps({**r, "answer": r["messages"][1]["content"]}) for r in colours]
    tasks.write_text("\n".join(lines) + "\n" + box_records(tmp_path).read_text())
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "thinktune", "eval", "--model", str(vl_dir), "--data", str(tasks), "-o", str(out),
         "--set", "eval.max_new_tokens=6"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["headline"]["n"] == 7 and report["headline"]["box_tasks"] == 4
    assert 0.0 <= report["headline"]["mean_iou"] <= 1.0
    assert all("iou" in s for s in report["samples"][3:]) and not any("iou" in s for s in report["samples"][:3])
    assert report["headline"]["loss"] is not None  # the reference loss ran with the images


def test_generation_sees_the_image(vl_dir, tmp_path):
    """The same question about two different pictures: the prompt's image tokens differ in number with the image's
    size, and the model's next-token distribution depends on the pixels."""
    from PIL import Image

    from thinktune.data.render import render_prompt
    from thinktune.models.vision import load_vision

    model, tok, _ = load_pretrained(ModelConfig(name_or_path=str(vl_dir)))
    vision = load_vision(model, vl_dir)
    small, large = Image.new("RGB", (28, 28), (200, 0, 0)), Image.new("RGB", (84, 84), (0, 0, 200))
    prompt = render_prompt(tok, vision.messages([{"role": "user", "content": "<image>What colour?"}]))
    ids_small, ids_large = vision.prompt_ids(tok, prompt, [small]), vision.prompt_ids(tok, prompt, [large])
    pad = model.config.image_token_id
    assert ids_small.count(pad) == vision.tokens([small])[0] < ids_large.count(pad) == vision.tokens([large])[0]
    import torch

    logits = []
    for ids, im in ((ids_small, small), (ids_small, small.point(lambda v: 255 - v))):
        with torch.no_grad():
            logits.append(model(input_ids=torch.tensor([ids]), **vision.pixels([im])).logits[0, -1])
    assert not torch.allclose(logits[0], logits[1])
    from thinktune.data.record_error import RecordError

    with pytest.raises(RecordError, match="2 image"):
        vision.prompt_ids(tok, prompt, [small, large])  # two images for one placeholder


def test_image_tasks_on_a_text_model_are_one_line(tmp_path):
    from tests.tiny_models import build_tiny_model

    text_model = build_tiny_model("llama", tmp_path / "llama")
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "thinktune", "eval", "--model", str(text_model), "--data", str(box_records(tmp_path)),
         "-o", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "have images and the model takes text only" in proc.stderr + proc.stdout


def test_data_inspect_shows_where_image_tokens_go(vl_dir, tmp_path):
    """`data inspect` with a vision-language model: the image token written once with how many tokens it stands for
    (as many as training repeats it), outside the trained part; the token count includes them."""
    from thinktune.models.vision import vision_without_weights

    data = colour_records(tmp_path, 1)
    proc = subprocess.run(
        [sys.executable, "-m", "thinktune", "data", "inspect", str(data), "--model", str(vl_dir), "--no-color"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    vision = vision_without_weights(vl_dir)
    [n] = vision.tokens([tmp_path / "img" / "0.png"])
    assert f"<|vision_start|><|image_pad|>×{n}<|vision_end|>Which colour is this?" in proc.stdout
    assert "[[red" in proc.stdout and f"→ {n} image tokens (never trained)" in proc.stdout
    from thinktune.data.prepare import prepare_training_data

    _, tok, _ = load_pretrained(ModelConfig(name_or_path=str(vl_dir)))
    [sample] = prepare_training_data(DataConfig(train=[str(data)], cache=False), tok, vision=vision).samples
    assert f"· {len(sample.input_ids)} tokens · {sample.trained_tokens} trained · parity ok" in proc.stdout


@pytest.mark.parametrize(
    ("method", "vision", "visual", "merger"),
    [("lora", "frozen", 0, 0), ("lora", "projector", 5, 5), ("lora", "tower", 30, 5),
     ("full", "frozen", 0, 0), ("full", "projector", 5, 5), ("full", "tower", 30, 5),
     ("freeze", "projector", 5, 5)],
)  # fmt: skip
def test_method_vision_trains_the_projector_or_the_tower(vl_dir, method, vision, visual, merger):
    """method.vision: the language model only (default), plus the projector (visual.merger) in full, or the whole
    vision encoder; under LoRA they are saved whole beside the adapter (PEFT modules_to_save)."""
    model, _, _ = load_pretrained(ModelConfig(name_or_path=str(vl_dir)))
    trained = [n for n, p in apply_method(model, MethodConfig(name=method, vision=vision)).named_parameters()
               if p.requires_grad]  # fmt: skip
    assert sum(".visual." in n for n in trained) == visual
    assert sum(".merger." in n for n in trained) == merger
    assert any(".language_model." in n for n in trained)


def test_method_vision_refusals(vl_dir, tmp_path):
    from tests.tiny_models import build_tiny_model
    from thinktune.methods import check_method_environment, check_method_model

    with pytest.raises(ConfigError, match="method.vision=projector applies to method.name lora, freeze, full"):
        check_method_environment(MethodConfig(name="ia3", vision="projector"))
    text, _, _ = load_pretrained(ModelConfig(name_or_path=str(build_tiny_model("llama", tmp_path / "llama"))))
    with pytest.raises(ConfigError, match="'llama' has no vision encoder"):
        check_method_model(text, MethodConfig(vision="tower"))


def test_learns_from_the_pixels_then_serves_them(vl_dir, tmp_path):
    """End to end: full fine-tuning on colour questions, evaluated on held-out pictures (the answer is in the image
    only: three colours, one question, so held-out accuracy above chance means the model reads the pixels), then
    `thinktune serve --run-dir` answers the real `openai` client sending a picture as a data: URL."""
    (tmp_path / "train").mkdir()
    train_file = colour_records(tmp_path / "train", 24)
    test = [json.loads(line) for line in colour_records(tmp_path, 6).read_text().splitlines()]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({**r, "answer": r["messages"][1]["content"]}) + "\n" for r in test))
    out = tmp_path / "run"
    sets = [f"model.name_or_path={vl_dir}", f"data.train=[{train_file}]", f"data.test={tasks}", "method.name=full",
            "train.max_steps=80", "train.batch_size=4", "train.learning_rate=3e-3", "train.warmup_ratio=0",
            "eval.max_new_tokens=4", f"output_dir={out}"]  # fmt: skip
    train(sets)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["before"]["accuracy"] == 0.0 and summary["after"]["accuracy"] >= 5 / 6
    assert (out / "model" / "preprocessor_config.json").is_file()  # the full model folder serves on its own

    import base64
    import io
    import os
    import socket
    import time

    import httpx
    import openai
    from PIL import Image

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "thinktune", "serve", "--run-dir", str(out), "--port", str(port), "--threads", "1"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        served = [m.id for m in client.models.list()][-1]  # the run, under its name
        answers = {}
        for name, rgb in {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}.items():
            buf = io.BytesIO()
            Image.new("RGB", (44, 36), rgb).save(buf, format="PNG")
            url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
            parts = [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "Which colour is this?"},
            ]
            reply = client.chat.completions.create(
                model=served, messages=[{"role": "user", "content": parts}], max_tokens=4, temperature=0
            )
            answers[name] = reply.choices[0].message.content.strip()
        assert sum(answers[k] == k for k in answers) >= 2, answers
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.parametrize("method", ["lora", "full", "freeze"])
@pytest.mark.parametrize("vision", ["frozen", "projector", "tower"])
def test_planner_counts_what_method_vision_trains(vl_dir, method, vision):
    """The memory planner reads a vision-language model whole (vision encoder included) and counts the parameters
    method.vision trains as apply_method does; the encoder's activations grow with the image tokens only when
    something in it trains."""
    from dataclasses import replace

    from thinktune.methods import count_parameters
    from thinktune.models.memory import TrainSetup, activation_bytes, model_shape, trainable_counts

    cfg = MethodConfig(name=method, vision=vision)
    shape = model_shape(str(vl_dir))
    model, _, _ = load_pretrained(ModelConfig(name_or_path=str(vl_dir)))
    assert shape.total_params == sum(p.numel() for p in model.parameters()) and shape.vision_layers == 2
    assert trainable_counts(shape, cfg)[0] == count_parameters(apply_method(model, cfg))[0]
    setup = TrainSetup(method=cfg, batch_size=2, seq_len=256, precision="fp32")
    grown = activation_bytes(shape, replace(setup, image_tokens=128)) - activation_bytes(shape, setup)
    assert (grown > 0) == (vision != "frozen")
