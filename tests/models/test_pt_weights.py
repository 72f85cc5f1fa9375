"""PyTorch pickle weights (`pytorch_model.bin`, shards, a `.pt` state dict): loaded with weights_only, same logits as
the original; files that need pickled code are refused in one line and never run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from thinktune.config import ModelConfig
from thinktune.errors import ModelNotFoundError, WeightsError
from thinktune.models import load_pretrained, resolve_model

ROOT = Path(__file__).parents[2]


def thinktune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "THINKTUNE_HOME": str(cwd / ".thinktune"), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "thinktune", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


class Marker:
    """Unpickling this creates a file: proof that a loader ran pickled code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture(scope="module")
def original(tiny_model_dirs):
    path = tiny_model_dirs["llama"]
    return path, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def config_only(src: Path, dest: Path) -> Path:
    """The model directory without its safetensors: config, generation config, tokenizer files."""
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, dest / f.name)
    return dest


def logits(model) -> torch.Tensor:
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    with torch.no_grad():
        return model(ids).logits


def load(path: Path):
    model, tokenizer, source = load_pretrained(ModelConfig(name_or_path=str(path), dtype="float32"))
    return model.eval(), tokenizer, source


def test_pytorch_model_bin_directory(original, tmp_path):
    src, model = original
    d = config_only(src, tmp_path / "bin")
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    loaded, tokenizer, source = load(d)
    assert source.path == d and source.weights_file is None
    assert torch.equal(logits(loaded), logits(model))
    assert tokenizer.chat_template


def test_sharded_bin_directory(original, tmp_path):
    src, model = original
    d = config_only(src, tmp_path / "shards")
    state = model.state_dict()
    keys = sorted(state)
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate([keys[:half], keys[half:]], start=1):
        name = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({k: state[k] for k in part}, d / name)
        weight_map.update(dict.fromkeys(part, name))
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    loaded, _, _ = load(d)
    assert torch.equal(logits(loaded), logits(model))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {f"module.{k}": v for k, v in sd.items()},  # DDP
        lambda sd: {f"module._orig_mod.{k}": v for k, v in sd.items()},  # DDP around torch.compile
        lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3},  # a training wrapper
    ],
    ids=["plain", "ddp", "ddp-compiled", "wrapper-checkpoint"],
)
def test_pt_file_next_to_its_config(original, tmp_path, wrap):
    src, model = original
    d = config_only(src, tmp_path / "pt")
    torch.save(wrap(model.state_dict()), d / "model.pt")
    loaded, _, source = load(d / "model.pt")
    assert source.path == d and source.weights_file == "model.pt"
    assert source.description == str(d / "model.pt")
    assert torch.equal(logits(loaded), logits(model))


def test_base_model_state_dict_without_head_prefix(original, tmp_path):
    """Keys saved from the base model (`layers.0...`, no `model.`) get the prefix; the head is then missing."""
    src, model = original
    d = config_only(src, tmp_path / "base")
    torch.save(model.model.state_dict(), d / "model.pt")
    with pytest.raises(WeightsError, match=r"1 missing \(lm_head.weight\)") as err:
        load(d / "model.pt")
    assert "\n" not in str(err.value)


def test_missing_and_unexpected_keys_are_one_line(original, tmp_path):
    src, model = original
    d = config_only(src, tmp_path / "bad")
    state = dict(model.state_dict())
    del state["model.norm.weight"]
    state["model.extra.weight"] = torch.zeros(2)
    state["lm_head.weight"] = state["lm_head.weight"][:10]
    torch.save(state, d / "model.pt")
    with pytest.raises(WeightsError) as err:
        load(d / "model.pt")
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(d / "model.pt"))
    assert "1 missing (model.norm.weight)" in message
    assert "1 unexpected (model.extra.weight)" in message
    assert "lm_head.weight (10, 64)" in message


def test_pt_file_without_config_is_a_one_line_error(original, tmp_path):
    _, model = original
    torch.save(model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model(str(tmp_path / "model.pt"))


def test_not_a_torch_file(original, tmp_path):
    src, _ = original
    d = config_only(src, tmp_path / "junk")
    (d / "model.pt").write_bytes(b"not a pickle at all")
    with pytest.raises(WeightsError, match="cannot be read as PyTorch weights"):
        load(d / "model.pt")


def test_train_two_steps_from_a_pt_file(original, tmp_path):
    src, model = original
    d = config_only(src, tmp_path / "pt")
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, d / "model.pt")
    out = tmp_path / "run"
    sets = ["train.max_steps=2", "train.batch_size=2", "data.max_train_samples=4", "eval.before=false"]
    sets += ["eval.after=false", "data.max_length=256", f"model.name_or_path={d / 'model.pt'}"]
    r = thinktune("train", "-o", str(out), *[x for s in sets for x in ("--set", s)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "adapter" / "adapter_config.json").is_file()
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(s.get("step") == 2 for s in steps)


@pytest.mark.parametrize("payload", ["module", "marker"])
def test_pickled_code_is_refused_and_never_runs(original, tmp_path, payload):
    src, model = original
    d = config_only(src, tmp_path / "evil")
    marker = tmp_path / "pickled-code-ran"
    if payload == "module":
        torch.save(model, d / "model.pt")  # a whole pickled nn.Module: its class is code
        needle = "LlamaForCausalLM"
    else:
        torch.save({**model.state_dict(), "x": Marker(marker)}, d / "model.pt")
        needle = "open"
    r = thinktune("train", "--set", f"model.name_or_path={d / 'model.pt'}", "-o", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert str(d / "model.pt") in lines[0] and "pickled code" in lines[0] and needle in lines[0]
    assert not marker.exists()


def test_marker_payload_really_runs_when_unpickled_unsafely(tmp_path):
    """The control for the test above: the same file loaded without weights_only does create the marker."""
    marker = tmp_path / "ran"
    torch.save({"x": Marker(marker)}, tmp_path / "m.pt")
    torch.load(tmp_path / "m.pt", weights_only=False)["x"].close()
    assert marker.exists()


def test_vllm_is_told_it_cannot_take_a_pt_file(original, tmp_path):
    from thinktune.models.loading import vllm_model_path

    src, model = original
    d = config_only(src, tmp_path / "pt")
    torch.save(model.state_dict(), d / "model.pt")
    with pytest.raises(ModelNotFoundError, match="vLLM loads Hugging Face directories"):
        vllm_model_path(resolve_model(str(d / "model.pt")))
    assert vllm_model_path(resolve_model(str(src))) == str(src)
