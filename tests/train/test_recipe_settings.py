"""Settings are honoured or refused: every SFT setting given to `thinktune dpo` / `thinktune grpo` either works there
or stops the command in one line before anything loads (train/settings.py), and the ones made to work do."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from rich.console import Console
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from thinktune.cli import app
from thinktune.cli.app import build_config
from thinktune.config import DataConfig, MethodConfig, load_config, to_yaml
from thinktune.errors import ConfigError, DataError, ModelNotFoundError
from thinktune.methods import MethodContext, apply_method, method_loss, optimizer_parameters
from thinktune.train import policy
from thinktune.train import run as run_module
from thinktune.train.dpo import DPOConfig, load_preferences
from thinktune.train.engine.ewc import canonical_name, save_fisher
from thinktune.train.engine.speed import decoder_layers
from thinktune.train.grpo import GRPOConfig, fit_prompts, load_rl_tasks
from thinktune.train.objectives import Objective, parameter_penalty
from thinktune.train.settings import HONOURED, SFT_ONLY, UNSUPPORTED_METHODS, all_settings, check_settings

ROOT = Path(__file__).parents[2]
RECIPES = {"dpo": DPOConfig, "grpo": GRPOConfig}
runner = CliRunner()

# A value other than the default for every setting some recipe refuses.
REFUSED_VALUES = {
    "data.empty_think_in_loss": "true",
    "data.augment": "{template_fraction: 0.5}",
    "data.num_proc": "4",
    "data.cache": "false",
    "data.cache_dir": "/tmp/thinktune-cache",
    "data.seed": "7",
    "train.label_smoothing": "0.1",
    "train.torch_compile": "true",
    "train.save_fisher": "true",
    "train.packing": "true",
    "train.loss_chunk_size": "512",
    "train.liger_kernels": "true",
    "train.teacher": "some/teacher",
    "train.distill_alpha": "0.9",
    "train.distill_temperature": "3.0",
    "train.unlikelihood_weight": "0.5",
    "train.contrastive_weight": "0.5",
}
REFUSED = [(r, k) for r in RECIPES for k in sorted(all_settings() - HONOURED[r])]

# Non-default values of settings both recipes read (a few of each kind; the ones made to work included).
HONOURED_VALUES = [
    "data.max_length=128",
    "data.max_train_samples=8",
    "data.thinking='off'",
    "data.multi_turn=last",
    "data.max_parity_mismatch=0.2",
    "data.cleaning={near_dedup: false}",
    "data.balance_by=meta.kind",
    "train.gradient_checkpointing=true",
    "train.max_steps=3",
    "train.optimizer=adamw_fused",
    "method.name=adalora",
    "eval.max_new_tokens=16",
]


# ---- the table ----


def test_every_setting_is_honoured_or_refused_with_a_reason():
    assert HONOURED["sft"] == all_settings()
    assert set(SFT_ONLY) <= all_settings() and set(REFUSED_VALUES) == set(SFT_ONLY)
    for recipe in RECIPES:
        refused = all_settings() - HONOURED[recipe]
        assert HONOURED[recipe] <= all_settings() and refused <= set(SFT_ONLY), recipe
    for key in ("data.empty_think_in_loss", "train.torch_compile"):
        assert key in HONOURED["dpo"] and key not in HONOURED["grpo"]


def test_the_table_in_the_docs_matches_the_code():
    doc = (ROOT / "docs" / "rl.md").read_text()
    for key in SFT_ONLY:
        line = next((x for x in doc.splitlines() if x.startswith(f"| `{key}` |")), None)
        assert line is not None, key
        cells = [c.strip() for c in line.split("|")[2:5]]
        assert cells[0] == "yes" and all(
            c.startswith("refused") == (key not in HONOURED[r]) for c, r in zip(cells[1:], RECIPES, strict=True)
        ), line


# ---- refused: one line from the CLI, before the model loads ----


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails loudly: a refusal must come first; an accepted config gets this far."""

    def load(*args, **kwargs):
        raise ModelNotFoundError("model load reached")

    monkeypatch.setattr(run_module, "load_pretrained", load)


def invoke(recipe: str, *args: str):
    return runner.invoke(
        app,
        [recipe, "--set", "model.name_or_path=/nonexistent/model", *args],
        env={"COLUMNS": "200", "NO_COLOR": "1"},
    )


@pytest.mark.parametrize(("recipe", "key"), REFUSED, ids=[f"{r}-{k}" for r, k in REFUSED])
def test_cli_refuses_each_sft_only_setting_in_one_line(recipe, key, no_model, tmp_path):
    r = invoke(recipe, "--set", f"{key}={REFUSED_VALUES[key]}", "-o", str(tmp_path / "run"))
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith(f"error: thinktune {recipe} ignores {key}") and "SFT settings" in lines[0]
    assert "Traceback" not in r.output and "model load reached" not in r.output
    assert not (tmp_path / "run").exists()  # nothing written either


def test_all_refused_settings_are_named_at_once_with_how_to_reset_them():
    cfg = load_config(None, ["train.packing=true", "train.loss_chunk_size=64", "train.label_smoothing=0.1"])
    with pytest.raises(ConfigError) as e:
        check_settings(cfg, "dpo")
    msg = str(e.value)
    assert "\n" not in msg
    assert "train.label_smoothing=0.1, train.packing=true, train.loss_chunk_size=64" in msg
    assert "--set train.packing=false" in msg and "--set train.loss_chunk_size=null" in msg
    assert msg.endswith("conservative DPO is dpo.label_smoothing")
    with pytest.raises(ConfigError, match="grpo ignores train.label_smoothing=0.1, train.packing") as e:
        check_settings(cfg, "grpo")
    assert "dpo.label_smoothing" not in str(e.value)


@pytest.mark.parametrize("method", sorted(UNSUPPORTED_METHODS))
def test_methods_the_rl_recipes_cannot_train_are_refused_before_loading(method):
    cfg = load_config(None, [f"method.name={method}"])
    for recipe in RECIPES:
        with pytest.raises(ConfigError, match=f"thinktune {recipe} cannot train method.name={method}"):
            check_settings(cfg, recipe)
    check_settings(cfg, "sft")


def test_dataset_weights_count_only_when_data_train_is_read():
    cfg = load_config(None, ["data.train=[{path: bundled:arithmetic/train, weight: 2}]"])
    with pytest.raises(ConfigError, match=r"grpo ignores data.train\[0\].weight=2.0"):
        check_settings(cfg, "grpo")
    check_settings(cfg, "grpo", ["prefs.jsonl"])  # --data replaces data.train


# ---- honoured: accepted, and the command goes on to load the model ----


@pytest.mark.parametrize("item", HONOURED_VALUES)
def test_honoured_settings_pass_the_check(item):
    cfg = load_config(None, [item])
    for recipe in RECIPES:
        check_settings(cfg, recipe)


def test_dpo_also_honours_what_only_it_can_use():
    cfg = load_config(None, ["train.torch_compile=true", "data.empty_think_in_loss=true"])
    check_settings(cfg, "dpo")
    with pytest.raises(ConfigError, match="grpo ignores data.empty_think_in_loss=true, train.torch_compile=true"):
        check_settings(cfg, "grpo")


def test_explicit_defaults_are_not_given_settings():
    cfg = load_config(None, ["train.packing=false", "train.label_smoothing=0", "data.cache=true", "data.seed=42"])
    for recipe in RECIPES:
        check_settings(cfg, recipe)


@pytest.mark.parametrize("recipe", RECIPES)
def test_cli_with_honoured_settings_reaches_the_model(recipe, no_model, tmp_path):
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n")
    data = ["--data", str(prefs)] if recipe == "dpo" else []
    sets = [x for item in HONOURED_VALUES if not item.startswith("method.") for x in ("--set", item)]
    r = invoke(recipe, *data, *sets, "--set", "train.report_to=[]", "-o", str(tmp_path / "run"))
    assert r.exit_code == 2 and "model load reached" in r.output, r.output


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize(
    "path", [None, *sorted((ROOT / "examples").glob("*.yaml"))], ids=lambda p: getattr(p, "name", "quickstart")
)
def test_shipped_configs_pass_the_check(recipe, path):
    cfg = build_config(path, [], None)
    check_settings(cfg, recipe)


@pytest.mark.parametrize("recipe", RECIPES)
def test_an_sft_runs_config_yaml_passes_the_check(recipe, tmp_path):
    """`thinktune grpo -c runs/quickstart/config.yaml --adapter runs/quickstart/adapter`: every field written out,
    the SFT-only ones at their defaults."""
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(load_config(None)))
    cfg = build_config(saved, [], None)
    check_settings(cfg, recipe)


# ---- made to work ----


def test_grpo_rejects_prompts_longer_than_max_length_and_counts_usable_ones(tiny_tokenizer):
    tasks = [
        {
            "prompt": [{"role": "user", "content": q, "reasoning": None}],
            "answer": "1",
            "meta": {"source": "t", "line": i},
        }
        for i, q in enumerate(["1?", "word " * 200, "2?", "3?"], start=1)
    ]
    data = DataConfig(max_length=64, max_train_samples=2, max_bad_fraction=0.5)
    kept, rejects = fit_prompts(tiny_tokenizer, tasks, data)
    assert [t["meta"]["line"] for t in kept] == [1, 3]  # the first two usable prompts
    assert len(rejects) == 1 and rejects[0].line == 2 and "data.max_length=64" in rejects[0].reason
    with pytest.raises(DataError, match="training prompts"):
        fit_prompts(tiny_tokenizer, tasks[:2], data.model_copy(update={"max_bad_fraction": 0.1}))


def test_grpo_cleans_the_prompt_set(tmp_path):
    path = tmp_path / "tasks.jsonl"
    rows = [{"prompt": "What is 2+2?", "answer": "4"}, {"prompt": "What is 2+2?", "answer": "4"}]
    rows.append({"prompt": "What is 3+3?", "answer": "6"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks, rejects = load_rl_tasks(DataConfig(cleaning={"near_dedup": False}), [str(path)])
    assert len(tasks) == 2 and [r.rule for r in rejects] == ["exact_duplicate"]
    assert len(load_rl_tasks(DataConfig(), [str(path)])[0]) == 3


def test_dpo_renders_pairs_in_the_thinking_mode_and_cleans_them(tiny_tokenizer, tmp_path):
    path = tmp_path / "prefs.jsonl"
    pair = {
        "prompt": "2+2?",
        "chosen": {"role": "assistant", "reasoning_content": "two and two", "content": "4"},
        "rejected": "5",
    }
    path.write_text("".join(json.dumps(r) + "\n" for r in [pair, pair, {**pair, "prompt": "2+2=?"}]))

    def load(*sets):
        run = SimpleNamespace(cfg=load_config(None, list(sets)), tokenizer=tiny_tokenizer)
        return load_preferences(run, [str(path)], "dpo")

    def chosen_text(data):
        return tiny_tokenizer.decode([x for x in data.chosen[0].labels if x != -100])

    plain = load()
    assert len(plain.records) == 3 and "two and two" in chosen_text(plain)
    off = load("data.thinking='off'", "data.cleaning={near_dedup: false}")
    assert len(off.records) == 2 and [r.rule for r in off.rejects] == ["exact_duplicate"]
    assert "two and two" not in chosen_text(off)


def fake_run(model, cfg):
    return SimpleNamespace(
        cfg=cfg, model=model, accelerator=Accelerator(cpu=True), dir=None, console=Console(quiet=True)
    )


def test_every_recipe_gets_the_method_term_and_ewc_once_per_step(tiny_model_dirs, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
    cfg = load_config(None, ["method.name=adalora"])
    model = apply_method(base, cfg.method, MethodContext(total_steps=20))
    params = optimizer_parameters(model, cfg.method)
    fisher = {canonical_name(n): torch.ones_like(p) for n, p in params}
    anchor = [(n, p.detach() + 1) for n, p in params]  # every parameter 1 away from its anchor
    path = save_fisher(tmp_path / "fisher.pt", fisher, anchor)
    cfg = load_config(None, ["method.name=adalora", "train.ewc_lambda=0.5", f"train.ewc_fisher={path}"])

    loss, parts = parameter_penalty(cfg, lambda m: m)(model)
    expected_ewc = 0.5 / 2 * sum(p.numel() for _, p in params)
    assert parts["ewc"] == pytest.approx(expected_ewc, rel=1e-5)
    assert parts["method"] == pytest.approx(float(method_loss(model, cfg.method).detach()))
    assert float(loss.detach()) == pytest.approx(parts["ewc"] + parts["method"], rel=1e-5)
    plain = load_config(None)
    assert parameter_penalty(plain, lambda m: m) is None


def test_load_policy_gives_the_method_the_runs_step_count(monkeypatch):
    seen = {}
    monkeypatch.setattr(policy, "apply_method", lambda model, cfg, ctx: seen.setdefault("ctx", ctx) and model)
    run = SimpleNamespace(cfg=load_config(None), model=torch.nn.Linear(2, 2), tokenizer="tok")
    policy.load_policy(run, None, total_steps=37)
    assert seen["ctx"].total_steps == 37 and seen["ctx"].tokenizer == "tok"


def test_prepare_training_compiles_the_policy_when_asked(tiny_model_dirs):
    for compile_ in (False, True):
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
        cfg = load_config(None, [f"train.torch_compile={str(compile_).lower()}"])
        run = fake_run(apply_method(base, MethodConfig(), MethodContext()), cfg)
        run_module.prepare_training(run, 8)
        layers = decoder_layers(run.accelerator.unwrap_model(run.model))
        assert layers and all((layer._compiled_call_impl is not None) == compile_ for layer in layers)


def test_every_recipe_draws_items_with_the_balance_weights(monkeypatch, tmp_path):
    records = [{"meta": {"kind": k}} for k in ("a", "a", "a", "b")]
    weights = run_module.balanced_weights(SimpleNamespace(data=DataConfig(balance_by="meta.kind")), records)
    assert weights == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0])  # each kind gets half the draws
    assert run_module.balanced_weights(SimpleNamespace(data=DataConfig()), records) is None
    with pytest.raises(ConfigError, match="data.balance_weights"):
        bad = DataConfig(balance_by="meta.kind", balance_weights={"a": 0, "b": 0})
        run_module.balanced_weights(SimpleNamespace(data=bad), records)

    seen = {}

    class Loop:
        def __init__(self, **kwargs):
            seen.update(kwargs)

        def run(self, resume=None):
            return SimpleNamespace(
                steps=0, seconds=0.0, final_loss=0.0, bad_steps=0, tokens=0, stopped_early=None, validations=[],
                best_step=None, resumed_from=None, spikes=0, rollbacks=0,
            )  # fmt: skip

    monkeypatch.setattr(run_module, "TrainLoop", Loop)
    cfg = load_config(None, ["train.report_to=[]"])
    run = fake_run(torch.nn.Linear(2, 2), cfg)
    run.dir = tmp_path
    opt = run_module.Optimization([], None, None, 1)
    run_module.train_loop(run, opt, 4, lambda idx: {}, Objective(lambda m, b: (torch.zeros(()), {})), weights)
    assert seen["sample_weights"] == weights


# ---- the recipes' own settings: sections of the run config ----


@pytest.mark.parametrize(
    ("recipe", "sets", "want"),
    [
        ("grpo", ["grpo.num_generations=8", "grpo.beta=0"], {"num_generations": 8, "beta": 0.0}),
        ("dpo", ["dpo.loss=ipo", "dpo.beta=0.3"], {"loss": "ipo", "beta": 0.3}),
    ],
)
def test_set_reaches_the_recipe_section_through_the_cli(recipe, sets, want, monkeypatch, tmp_path):
    import importlib

    seen = {}

    def fake(cfg, *args, **kwargs):
        seen["cfg"] = cfg
        raise ModelNotFoundError("recipe reached")

    monkeypatch.setattr(importlib.import_module(f"thinktune.train.{recipe}"), f"run_{recipe}", fake)
    r = invoke(recipe, *[x for s in sets for x in ("--set", s)], "-o", str(tmp_path / "run"))
    assert r.exit_code == 2 and "recipe reached" in r.output, r.output
    section = getattr(seen["cfg"], recipe)
    assert {k: getattr(section, k) for k in want} == want
    # written to the run's config.yaml and read back as it was
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(seen["cfg"]))
    assert getattr(load_config(saved), recipe) == section


@pytest.mark.parametrize("recipe", RECIPES)
def test_an_unknown_key_in_a_recipe_section_is_one_line(recipe, no_model, tmp_path):
    r = invoke(recipe, "--set", f"{recipe}.nonsense=1", "-o", str(tmp_path / "run"))
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and f"{recipe}.nonsense" in lines[0], r.output


def test_a_yaml_recipe_section_reaches_the_recipe(monkeypatch, tmp_path):
    seen = {}

    def fake(cfg, *args, **kwargs):
        seen["cfg"] = cfg
        raise ModelNotFoundError("recipe reached")

    monkeypatch.setattr("thinktune.train.grpo.run_grpo", fake)
    config = tmp_path / "rl.yaml"
    config.write_text("grpo:\n  num_generations: 8\n  rewards: [accuracy]\n  loss_aggregation: token\n")
    r = invoke("grpo", "-c", str(config), "-G", "6", "-o", str(tmp_path / "run"))
    assert r.exit_code == 2 and "recipe reached" in r.output, r.output
    g = seen["cfg"].grpo
    assert (g.num_generations, g.rewards, g.loss_aggregation) == (6, ["accuracy"], "token")  # the option wins


def test_an_unknown_key_in_a_yaml_recipe_section_names_file_and_line(no_model, tmp_path):
    config = tmp_path / "rl.yaml"
    config.write_text("name: rl\ngrpo:\n  num_generations: 8\n  num_generation: 4\n")
    r = invoke("grpo", "-c", str(config), "-o", str(tmp_path / "run"))
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert f"{config}:4: unknown key 'grpo.num_generation'; did you mean 'grpo.num_generations'?" in lines[0]


# ---- another recipe's section: refused as the SFT-only settings are ----

FOREIGN = [
    ("train", "grpo.num_generations=8", "grpo.num_generations=8 (read by thinktune grpo only)"),
    ("train", "dpo.loss=ipo", "dpo.loss=ipo (read by thinktune dpo only)"),
    ("dpo", "grpo.beta=0", "grpo.beta=0.0 (read by thinktune grpo only)"),
    ("grpo", "dpo.reference=live", "dpo.reference=live (read by thinktune dpo only)"),
]


@pytest.mark.parametrize(("command", "item", "named"), FOREIGN, ids=[f"{c}-{i}" for c, i, _ in FOREIGN])
def test_cli_refuses_another_recipes_section_in_one_line(command, item, named, no_model, tmp_path):
    r = invoke(command, "--set", item, "-o", str(tmp_path / "run"))
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith(f"error: thinktune {command} ignores {named}: remove them"), lines[0]
    assert "model load reached" not in r.output and not (tmp_path / "run").exists()


def test_refused_settings_of_every_kind_are_named_at_once():
    cfg = load_config(None, ["train.packing=true", "grpo.beta=0", "grpo.rewards=[accuracy]", "dpo.loss=kto"])
    with pytest.raises(ConfigError) as e:
        check_settings(cfg, "dpo")
    assert str(e.value) == (
        "thinktune dpo ignores train.packing=true (SFT settings; see docs/rl.md), grpo.rewards, grpo.beta=0.0 "
        "(read by thinktune grpo only): remove them from the config or --set train.packing=false "
        "--set grpo.rewards=[accuracy, format] --set grpo.beta=0.04"
    )
    with pytest.raises(ConfigError, match=r"^thinktune train ignores dpo.loss=kto \(read by thinktune dpo only\), "):
        check_settings(cfg, "sft")


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_recipe_runs_config_yaml_passes_its_own_check_only(recipe, tmp_path):
    """A DPO/GRPO run's config.yaml holds its section; `-c` with it runs that recipe again, and no other silently."""
    item = {"dpo": "dpo.loss=simpo", "grpo": "grpo.num_generations=8"}[recipe]
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(load_config(None, [item])))
    cfg = build_config(saved, [], None)
    check_settings(cfg, recipe)
    for other in {"sft", *RECIPES} - {recipe}:
        with pytest.raises(ConfigError, match=f"ignores {item} "):
            check_settings(cfg, other)
