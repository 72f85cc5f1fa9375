"""The UI's pure parts: the form generated from config.py and its --set overrides, run status and rows, metric
series from a metrics.jsonl being written, path confinement, the host/auth rule."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from thinktune.config import SECTIONS, load_config
from thinktune.errors import ConfigError, UserError
from thinktune.ui import form, runs_view
from thinktune.ui.app import UIState, check_host, picker_choices, prepare_launch, split_report
from thinktune.ui.paths import OutsideRoots, confine, run_name_ok


def test_form_has_every_setting_of_the_training_sections_with_its_description():
    specs = {s.key: s for s in form.form_fields()}
    for section in form.FORM_SECTIONS:
        for name, f in SECTIONS[section].model_fields.items():
            assert specs[f"{section}.{name}"].description == (f.description or "")
    assert specs["train.lr_scheduler"].kind == "choice" and "cosine" in specs["train.lr_scheduler"].choices
    assert specs["model.trust_remote_code"].kind == "bool"
    assert specs["data.test"].kind == "str" and specs["data.test"].nullable
    assert specs["train.max_steps"].kind == "yaml"


@pytest.mark.parametrize(
    ("key", "shown", "expected"),
    [
        ("train.learning_rate", "5e-4", "train.learning_rate=5e-4"),
        ("data.system_prompt", "Answer: briefly", 'data.system_prompt="Answer: briefly"'),
        ("train.lr_scheduler", "linear", 'train.lr_scheduler="linear"'),
        ("train.gradient_checkpointing", True, "train.gradient_checkpointing=true"),
        ("data.test", "", "data.test="),
        ("data.train", '["a.jsonl", "b.jsonl"]', 'data.train=["a.jsonl", "b.jsonl"]'),
    ],
)
def test_a_changed_field_becomes_one_set_override(key, shown, expected):
    base = load_config()
    specs = form.form_fields()
    values = form.form_values(base, specs)
    assert form.overrides(base, specs, values) == []  # unchanged form: nothing to say
    values[[s.key for s in specs].index(key)] = shown
    assert form.overrides(base, specs, values) == [expected]


def test_overrides_round_trip_through_the_cli_loader():
    base = load_config()
    specs = form.form_fields()
    values = form.form_values(base, specs)
    keys = [s.key for s in specs]
    values[keys.index("data.system_prompt")] = "Answer: briefly"
    values[keys.index("train.max_steps")] = "7"
    cfg = form.check(None, form.overrides(base, specs, values), "train")
    assert cfg.data.system_prompt == "Answer: briefly" and cfg.train.max_steps == 7


def test_invalid_field_gives_the_cli_one_line_error(tmp_path):
    state = UIState(tmp_path)
    specs = form.form_fields()
    values = form.form_values(load_config(), specs)
    values[[s.key for s in specs].index("train.learning_rate")] = "-1"
    with pytest.raises(ConfigError) as e:
        prepare_launch(state, "train", "", specs, values)
    assert str(e.value).startswith("--set train.learning_rate=-1: train.learning_rate: ")
    assert "\n" not in str(e.value)


def test_launch_command_writes_into_the_runs_dir(tmp_path):
    state = UIState(tmp_path / "runs")
    specs = form.form_fields()
    values = form.form_values(load_config(), specs)
    values[0] = "try1"
    argv, run_dir, cfg = prepare_launch(state, "dpo", "", specs, values)
    assert run_dir == (tmp_path / "runs" / "try1").resolve()
    assert argv[2:4] == ["thinktune", "dpo"] and argv[-2:] == ["--output-dir", str(run_dir)]
    assert "--set" in argv and 'name="try1"' in argv


def test_paths_outside_the_roots_are_refused(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("name: x\n")
    with pytest.raises(OutsideRoots, match="outside the directories"):
        confine(outside, [runs])
    with pytest.raises(OutsideRoots):
        confine("../elsewhere.yaml", [runs])
    (runs / "link").symlink_to(tmp_path)
    with pytest.raises(OutsideRoots):
        confine("link/elsewhere.yaml", [runs])
    assert confine("a/b.yaml", [runs]) == (runs / "a" / "b.yaml").resolve()
    for bad in ("../x", "a/b", "", ".."):
        with pytest.raises(OutsideRoots):
            run_name_ok(bad)
    # through the form: a base config, a model folder and a run name outside are refused
    state = UIState(runs)
    specs = form.form_fields()
    values = form.form_values(load_config(), specs)
    with pytest.raises(OutsideRoots):
        prepare_launch(state, "train", str(outside), specs, values)
    values[[s.key for s in specs].index("model.name_or_path")] = str(tmp_path)
    with pytest.raises(OutsideRoots):
        prepare_launch(state, "train", "", specs, values)
    values = form.form_values(load_config(), specs)
    values[0] = "../escape"
    with pytest.raises(OutsideRoots):
        prepare_launch(state, "train", "", specs, values)


def test_host_beyond_loopback_needs_auth():
    assert check_host("127.0.0.1", None) is None
    assert check_host("0.0.0.0", "u:p") == ("u", "p")
    with pytest.raises(UserError, match="--host 0.0.0.0 .* add --auth USER:PASSWORD"):
        check_host("0.0.0.0", None)
    with pytest.raises(UserError, match="USER:PASSWORD"):
        check_host("127.0.0.1", "nopassword")


def write_run(path: Path, summary: dict | None = None, metrics: list[dict] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("name: r\nmethod: {name: lora}\nmodel: {name_or_path: /m/tiny}\n")
    if metrics is not None:
        (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_status_and_rows(tmp_path):
    done = write_run(
        tmp_path / "done",
        {"recipe": "sft", "method": "lora", "model": "/m/tiny", "before": {"accuracy": 0.25},
         "after": {"accuracy": 0.5}, "steps": 6, "wall_seconds": 75.0},
    )  # fmt: skip
    live = write_run(tmp_path / "live", metrics=[{"step": 1, "loss": 2.0}])
    dead = write_run(tmp_path / "dead", metrics=[{"step": 1, "loss": 2.0}])
    old = time.time() - 3600
    os.utime(dead / "metrics.jsonl", (old, old))
    assert runs_view.run_row(done) == ["done", "finished", "sft", "lora", "tiny", "25.0%", "50.0%", "6", "1m15s"]
    assert runs_view.status(live) == "running" and runs_view.status(dead) == "failed"
    assert runs_view.status(dead, alive=True) == "running" and runs_view.status(live, alive=False) == "failed"
    assert runs_view.run_row(live)[3:5] == ["lora", "tiny"]
    assert {p.name for p in runs_view.run_dirs(tmp_path)} == {"done", "live", "dead"}


def test_stop_leaves_stopped_and_resume_replays_the_launch_command(tmp_path):
    """A real child process launched, stopped (status `stopped`, not `failed`), then resumed with its own argv plus
    `--resume auto`; a run without a checkpoint or not launched here is refused in one line."""
    import sys

    from thinktune.ui.jobs import Jobs, resume_command

    jobs = Jobs(tmp_path)
    run = tmp_path / "r1"
    args = [sys.executable, "-c", "import time; time.sleep(60)", "--set", "name=a b"]
    jobs.launch(args, run)
    assert runs_view.status(run, jobs.alive("r1")) == "running"
    assert (run / "console.log").read_text().startswith("$ thinktune --set 'name=a b'")
    assert jobs.stop("r1", timeout=10).startswith("r1: stopped")
    assert runs_view.status(run, jobs.alive("r1")) == "stopped" and runs_view.run_row(run)[1] == "stopped"
    with pytest.raises(UserError, match="r1: no checkpoint to resume from"):
        resume_command(run)
    (run / "checkpoints" / "step-4").mkdir(parents=True)
    (run / "checkpoints" / "step-4" / "position.json").write_text("{}")
    assert resume_command(run) == [sys.executable, "-m", "thinktune", *args[3:], "--resume", "auto"]
    (run / "metrics.jsonl").write_text(json.dumps({"step": 4, "loss": 1.0, "bad_steps": 2}) + "\n")
    with open(run / "console.log", "a") as f:
        f.write("warning: step 3: gradient-norm spike 9.1 > mean + 3σ (2.0) of the last 3 steps\n")
    line = runs_view.checkpoints_and_guards(run)
    assert line == "**checkpoints** step-4 · **skipped non-finite steps** 2 · **spike warnings** 1"
    with pytest.raises(UserError, match="not launched from this UI"):
        resume_command(write_run(tmp_path / "shell", metrics=[{"step": 1, "loss": 2.0}]))


def test_pickers_offer_bundled_and_local_models_and_data(tmp_path):
    root, runs = tmp_path / "data", tmp_path / "runs"
    (root / "models" / "tiny").mkdir(parents=True)
    (root / "models" / "tiny" / "config.json").write_text("{}")
    (root / "models" / "q.gguf").write_bytes(b"GGUF")
    (root / "sets" / "deep" / "er").mkdir(parents=True)
    (root / "sets" / "med.jsonl").write_text("{}\n")
    (root / "sets" / "deep" / "er" / "too-deep.jsonl").write_text("{}\n")  # beyond the scan depth
    (runs / "r1" / "export" / "merged").mkdir(parents=True)
    (runs / "r1" / "export" / "merged" / "config.json").write_text("{}")
    picks = picker_choices(UIState(runs, [root]))
    assert picks["model.name_or_path"] == [
        "smollm2-135m-instruct", str(root / "models" / "q.gguf"), str(root / "models" / "tiny"),
        str(runs / "r1" / "export" / "merged"),
    ]  # fmt: skip
    assert '["bundled:arithmetic/train"]' in picks["data.train"]
    assert json.dumps([str(root / "sets" / "med.jsonl")]) in picks["data.test"]
    assert not any("too-deep" in c for c in picks["data.train"])


def test_metric_series_skip_a_torn_last_line(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1, "loss": 2.5, "lr": 0.001}\n{"step": 2, "loss": 2.0, "grad_norm": 0.5}\n{"step": 3, "lo')
    points = runs_view.curves(runs_view.read_metric_rows(f))
    assert points["loss"] == [(1, 2.5), (2, 2.0)] and points["lr"] == [(1, 0.001)]
    assert points["grad_norm"] == [(2, 0.5)] and points["tokens_per_second"] == []


def test_report_images_leave_the_markdown():
    md = "# Comparison\n\n| a |\n\n![metrics](charts/metrics.png)\n![t](charts/think_length.png)\n## more"
    out = split_report(md)
    assert "charts/" not in out and "# Comparison" in out and "## more" in out


def test_export_tab_runs_the_cli_and_shows_its_verification(tmp_path, tiny_model_dirs):
    """The Export tab's function exports a real LoRA run as the CLI does and reads back its verify.json; an unknown
    format and a failing export are one line."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from thinktune.config import to_yaml, validate
    from thinktune.ui.export import export_run

    base = tiny_model_dirs["llama"]
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(validate({"name": "tiny", "model": {"name_or_path": str(base)}})))
    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, init_lora_weights=False))
    peft.save_pretrained(run / "adapter")
    markdown, record = export_run(run, "merged")
    assert record is not None and (run / "export" / "merged" / "verify.json").is_file()
    assert record["max_abs_logit_diff"] < 1e-3 and "max abs logit diff" in markdown
    with pytest.raises(UserError, match="unknown export format"):
        export_run(run, "tflite")
    shutil.rmtree(run / "adapter")
    markdown, record = export_run(run, "adapter")
    assert record is None and markdown.startswith("**adapter export failed:**") and "\n" not in markdown


def test_a_grpo_run_launched_from_the_form_finishes(tmp_path, tiny_model_dirs):
    """The Launch page's path for another recipe: the form's values → `thinktune grpo ...` through Jobs, a real
    tiny-model run to its summary, shown as a finished grpo run."""
    state = UIState(tmp_path / "runs", [tiny_model_dirs["llama"].parent])
    specs = form.form_fields()
    values = form.form_values(load_config(), specs)
    keys = [s.key for s in specs]
    for key, value in {
        "name": "ui-grpo", "model.name_or_path": str(tiny_model_dirs["llama"]), "data.max_train_samples": "4",
        "train.max_steps": "1", "train.batch_size": "2", "train.report_to": "[]", "eval.before": False,
        "eval.after": False, "grpo.num_generations": "2", "grpo.max_completion_length": "6",
    }.items():  # fmt: skip
        values[keys.index(key)] = value
    argv, run_dir, _ = prepare_launch(state, "grpo", "", specs, values)
    proc = state.jobs.launch(argv, run_dir)
    assert proc.wait(600) == 0, (run_dir / "console.log").read_text()[-2000:]
    row = dict(zip(runs_view.COLUMNS, runs_view.run_row(run_dir, state.jobs.alive("ui-grpo")), strict=True))
    assert (row["status"], row["recipe"], row["steps"]) == ("finished", "grpo", "1")
