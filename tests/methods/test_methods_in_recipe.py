"""Every method family through the real SFT recipe (`run_sft` with `--set method.name=X`): the recipe's calls
(apply, optimizer_parameters, on_optimizer_step, save_trained) work, and what it saves loads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM

from thinktune.config import load_config
from thinktune.methods import load_trained
from thinktune.train.sft import run_sft

CASES = [
    ("adalora", "llama", ["method.r=4", "method.target_r=2"], ["adapter_config.json", "ranks.json"]),
    ("prompt_tuning", "qwen3", ["method.num_virtual_tokens=4"], ["adapter_config.json"]),
    ("prefix_tuning", "llama", ["method.num_virtual_tokens=4"], ["adapter_config.json"]),
    ("ia3", "deepseek_v3", [], ["adapter_config.json"]),
    ("lora", "deepseek_v3", ["method.expert_lora=true", "method.dropout=0"], ["adapter_config.json"]),
    ("freeze", "qwen3", ["method.top_layers=1", "method.progressive_unfreeze_step=2"], ["trained.safetensors"]),
    ("full", "llama", [], ["model.safetensors", "config.json"]),
    ("esft", "qwen3_moe", ["method.esft_threshold=0.5"], ["trained.safetensors", "experts.json"]),
]


@pytest.mark.parametrize(("name", "arch", "sets", "files"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_method_through_the_recipe(name, arch, sets, files, tiny_model_dirs, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_model_dirs[arch]}",
            f"output_dir={out}",
            "data.max_train_samples=8",
            "data.max_length=512",
            "train.max_steps=3",
            "train.batch_size=4",
            "train.learning_rate=1e-2",
            "eval.before=false",
            "eval.after=false",
            f"method.name={name}",
            *(f"{s}" for s in sets),
        ],
    )
    summary = run_sft(cfg, Console(quiet=True))
    assert summary["steps"] == 3 and summary["method"] == name
    saved = Path(summary["adapter_dir"])
    for f in [*files, "tokenizer_config.json"]:
        assert (saved / f).is_file(), f
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch])
    reference = base(input_ids=torch.tensor([[1, 5, 9, 2]])).logits
    tuned = load_trained(base, saved).eval()
    with torch.no_grad():
        logits = tuned(input_ids=torch.tensor([[1, 5, 9, 2]])).logits
    assert logits.shape == reference.shape and not torch.allclose(logits, reference)
    if name == "adalora":
        assert json.loads((saved / "ranks.json").read_text())


def _cfg(tiny_model_dirs, tmp_path, arch: str, *sets: str):
    return load_config(
        None,
        [
            f"model.name_or_path={tiny_model_dirs[arch]}",
            f"output_dir={tmp_path / 'run'}",
            "data.max_train_samples=8",
            "data.max_length=512",
            "train.batch_size=4",
            "eval.before=false",
            "eval.after=false",
            *sets,
        ],
    )


def test_recipe_checks_the_method_before_loading_weights(tiny_model_dirs, tmp_path, monkeypatch):
    """qlora without CUDA and esft with weight decay fail in one line before any weights are read."""
    import thinktune.train.run as run_module
    from thinktune.errors import ConfigError, EnvironmentProblem

    def no_load(*a, **k):
        raise AssertionError("weights were loaded before the method check")

    monkeypatch.setattr(run_module, "load_pretrained", no_load)
    if not torch.cuda.is_available():
        with pytest.raises(EnvironmentProblem, match="qlora needs a CUDA GPU"):
            run_sft(_cfg(tiny_model_dirs, tmp_path, "llama", "method.name=qlora"), Console(quiet=True))
    with pytest.raises(ConfigError, match="esft needs train.weight_decay=0"):
        run_sft(
            _cfg(tiny_model_dirs, tmp_path, "qwen3_moe", "method.name=esft", "train.weight_decay=0.1"),
            Console(quiet=True),
        )


def test_adalora_in_the_recipe_schedules_over_the_run_and_adds_its_penalty(tiny_model_dirs, tmp_path, monkeypatch):
    """The recipe gives AdaLoRA the run's optimizer-step count (its rank schedule) and adds its orthogonality loss."""
    import thinktune.methods as methods
    import thinktune.train.objectives as objectives
    import thinktune.train.sft as sft

    seen: dict = {}
    real_apply, real_loss = methods.apply_method, methods.method_loss

    def spy_apply(model, cfg, context=None):
        seen["total_steps"] = context.total_steps
        return real_apply(model, cfg, context)

    def spy_loss(model, cfg):
        value = real_loss(model, cfg)
        seen.setdefault("penalties", []).append(None if value is None else float(value.detach()))
        return value

    monkeypatch.setattr(sft, "apply_method", spy_apply)
    monkeypatch.setattr(objectives, "method_loss", spy_loss)
    cfg = _cfg(
        tiny_model_dirs,
        tmp_path,
        "llama",
        "method.name=adalora",
        "method.r=4",
        "method.target_r=2",
        "train.max_steps=5",
    )
    summary = run_sft(cfg, Console(quiet=True))
    peft_cfg = json.loads((Path(summary["adapter_dir"]) / "adapter_config.json").read_text())
    assert seen["total_steps"] == 5 and peft_cfg["total_step"] == 5
    assert len(seen["penalties"]) == 5 and all(p is not None and p > 0 for p in seen["penalties"])


def test_eval_job_loads_any_method_output_from_the_run_dir(tiny_model_dirs, tmp_path):
    """`thinktune eval --adapter RUN_DIR` and chat accept a freeze/full/ESFT run as well as a PEFT adapter."""

    cfg = _cfg(
        tiny_model_dirs,
        tmp_path,
        "qwen3",
        "method.name=freeze",
        "method.top_layers=1",
        "train.max_steps=2",
        "train.learning_rate=1e-2",
    )
    summary = run_sft(cfg, Console(quiet=True))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["qwen3"])
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        reference = base(input_ids=ids).logits.clone()
        tuned = load_trained(base, summary["run_dir"])(input_ids=ids).logits
    assert not torch.allclose(tuned, reference)
    from thinktune.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="not a trained adapter"):
        load_trained(base, tmp_path)


def test_esft_on_a_dense_model_stops_before_the_first_evaluation(tiny_model_dirs, tmp_path, monkeypatch):
    import thinktune.train.run as run_module
    from thinktune.errors import ConfigError

    def no_eval(*a, **k):
        raise AssertionError("evaluated before the method/architecture check")

    monkeypatch.setattr(run_module, "run_eval", no_eval)
    cfg = _cfg(tiny_model_dirs, tmp_path, "llama", "method.name=esft", "train.weight_decay=0", "eval.before=true")
    with pytest.raises(ConfigError, match="esft needs a mixture-of-experts model"):
        run_sft(cfg, Console(quiet=True))


@pytest.mark.parametrize(("name", "arch"), [("full", "llama"), ("ia3", "qwen3")])
def test_an_unset_learning_rate_is_the_methods_default_scaled_to_the_width(name, arch, tiny_model_dirs, tmp_path):
    """train.learning_rate unset: the optimizer runs at the method's default x REFERENCE_WIDTH / hidden size (capped),
    as metrics.jsonl records it; a given learning rate is used as given."""
    from io import StringIO

    from transformers import AutoConfig

    from thinktune.methods import METHODS
    from thinktune.methods.base import REFERENCE_WIDTH, WIDTH_SCALE

    sets = ["train.max_steps=2", "train.lr_scheduler=constant", "train.warmup_ratio=0", f"method.name={name}"]
    out = StringIO()
    summary = run_sft(_cfg(tiny_model_dirs, tmp_path, arch, *sets), Console(file=out, width=200))
    hidden = AutoConfig.from_pretrained(tiny_model_dirs[arch]).hidden_size
    factor = min(max(REFERENCE_WIDTH / hidden, WIDTH_SCALE[0]), WIDTH_SCALE[1])
    expected = METHODS[name].learning_rate * factor
    rows = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["lr"] == pytest.approx(expected) for r in rows if "lr" in r)
    assert f"learning rate {expected:.3g}: {name}'s default" in out.getvalue()
    given = run_sft(
        _cfg(tiny_model_dirs, tmp_path / "given", arch, *sets, "train.learning_rate=3e-3"), Console(quiet=True)
    )
    rows = [json.loads(line) for line in (Path(given["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert all(r["lr"] == pytest.approx(3e-3) for r in rows if "lr" in r)


def test_default_learning_rate_scaling():
    from thinktune.methods import METHODS
    from thinktune.methods.base import default_learning_rate

    assert default_learning_rate(METHODS["lora"], 576) == pytest.approx((9.96e-4, 4096 / 576), rel=1e-3)  # SmolLM2
    assert default_learning_rate(METHODS["lora"], 4096) == (1.4e-4, 1.0)
    assert default_learning_rate(METHODS["full"], 64) == pytest.approx((8e-5, 8.0))  # capped
    assert default_learning_rate(METHODS["full"], 65536) == pytest.approx((2.5e-6, 0.25))
    assert default_learning_rate(METHODS["ia3"], None) == (3e-3, 1.0)
