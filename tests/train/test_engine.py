"""Training engine: resume after SIGKILL, guards, validation/early stopping, loggers, layer stats, DDP parity."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console

from thinktune.config import TrainConfig, load_config
from thinktune.train.engine.checkpoint import TrainPosition, list_checkpoints, save_checkpoint
from thinktune.train.engine.guards import Plateau, SpikeDetector
from thinktune.train.engine.loggers import read_metrics
from thinktune.train.engine.sampler import epoch_batches
from thinktune.train.sft import run_sft

ROOT = Path(__file__).parents[2]
QUIET = Console(quiet=True)


def base_sets(model_dir, out, steps=8, *extra):
    return [
        f"model.name_or_path={model_dir}",
        f"output_dir={out}",
        "data.test=null",
        "data.max_train_samples=64",
        "data.max_length=512",
        f"train.max_steps={steps}",
        "train.batch_size=4",
        "train.learning_rate=5e-3",
        *extra,
    ]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def cli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "thinktune", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        **kw,
    )


# --- pure pieces -------------------------------------------------------------------------------------------------


def test_two_shards_cover_the_single_process_batches():
    one = epoch_batches(10, 4, seed=1, epoch=0)
    r0 = epoch_batches(10, 2, seed=1, epoch=0, rank=0, world=2)
    r1 = epoch_batches(10, 2, seed=1, epoch=0, rank=1, world=2)
    assert [a + b for a, b in zip(r0, r1, strict=True)][:2] == one[:2]
    assert epoch_batches(10, 4, 1, 0) == epoch_batches(10, 4, 1, 0) != epoch_batches(10, 4, 1, 1)


def test_weighted_sampling_follows_weights():
    picks = [i for b in epoch_batches(1000, 10, 0, 0, weights=[0.9] + [0.1 / 999] * 999) for i in b]
    assert picks.count(0) > 800


def test_spike_detector_and_plateau():
    d = SpikeDetector(window=10)
    assert not any(d.update(1.0 + 0.01 * (i % 3)) for i in range(10))
    assert d.update(50.0) and not d.update(1.01)
    p = Plateau("min")
    assert [p.update(v) for v in (3, 2, 2.5, 2.1, 1.0)] == [True, True, False, False, True]


def test_checkpoint_is_atomic_and_keeps_last_k(tmp_path):
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, TrainPosition(step=step), [("w", w)], opt, sched, keep=2)
    (tmp_path / ".step-4.partial").mkdir()  # a half-written temp dir from a killed save is ignored
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-2", "step-3"]


def test_checkpoint_resumes_without_unpickling(tmp_path):
    """Optimizer, scheduler and every RNG come back exactly; a state.pt that carries code is refused, not run."""
    import random

    import numpy as np

    from thinktune.errors import UserError
    from thinktune.train.engine.checkpoint import load_checkpoint

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    w.grad = torch.full((3,), 0.3)
    opt.step()
    sched.step()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = save_checkpoint(tmp_path, TrainPosition(step=7, tokens=70), [("w", w)], opt, sched, keep=1)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)), opt.state_dict()["state"][0])

    w2 = torch.nn.Parameter(torch.zeros(3))
    opt2 = torch.optim.AdamW([w2], lr=0.1)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.5)
    position = load_checkpoint(path, [("w", w2)], opt2, sched2)
    assert position == TrainPosition(step=7, tokens=70)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected[:3]
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], expected[3]["exp_avg"])
    assert sched2.last_epoch == 1 and torch.equal(w2, w)
    files = ["layout.json", "position.json", "rng.json", "rng.safetensors", "state.pt", "trainable.safetensors"]
    assert sorted(f.name for f in path.iterdir()) == files

    class Payload:
        def __reduce__(self):
            return (print, ("this would have run",))

    torch.save({"optimizer": Payload(), "scheduler": {}}, path / "state.pt")
    with pytest.raises(UserError, match="not a plain optimizer/scheduler state"):
        load_checkpoint(path, [("w", w2)], opt2, sched2)


# --- the loop on a tiny model --------------------------------------------------------------------------------------


def test_sigkill_then_resume_gives_the_uninterrupted_curve(tiny_model_dirs, tmp_path):
    model = tiny_model_dirs["llama"]

    def sets(out):
        extra = ("train.save_steps=5", "eval.before=false", "eval.after=false")
        return [x for s in base_sets(model, out, 40, *extra) for x in ("--set", s)]

    full = tmp_path / "full"
    assert cli("train", *sets(full)).wait(timeout=300) == 0

    killed = tmp_path / "killed"
    proc = cli("train", *sets(killed))
    deadline = time.time() + 240
    while time.time() < deadline and not (killed / "checkpoints" / "step-10").exists():
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    last = list_checkpoints(killed / "checkpoints")[-1]

    resumed = cli("train", *sets(killed), "--resume", "auto")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert "resumed from" in out and last.name in out
    a, b = losses(full), losses(killed)
    assert len(a) == len(b) == 40
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-6
    assert json.loads((killed / "summary.json").read_text())["resumed_from"].endswith(last.name)


def test_non_finite_steps_are_skipped_then_stop_with_checkpoint(tiny_model_dirs, tmp_path, monkeypatch):
    import thinktune.train.objectives.sft as speed  # where the SFT loss is computed

    real = speed.combined_loss
    calls = {"n": 0}

    def sometimes_nan(logits, batch, cfg, teacher_logits=None):
        loss, parts = real(logits, batch, cfg, teacher_logits)
        calls["n"] += 1
        return (loss * math.nan if calls["n"] in (3, 6, 7, 8) else loss), parts

    monkeypatch.setattr(speed, "combined_loss", sometimes_nan)
    cfg = load_config(
        None,
        base_sets(
            tiny_model_dirs["llama"],
            tmp_path / "a",
            5,
            "eval.before=false",
            "eval.after=false",
            "train.max_bad_steps=5",
            "train.loss_chunk_size=null",  # the patched loss is the full-logits one
        ),
    )
    summary = run_sft(cfg, QUIET)
    assert summary["bad_steps"] == 4 and summary["steps"] == 5

    calls["n"] = 0
    cfg = load_config(
        None,
        base_sets(
            tiny_model_dirs["llama"],
            tmp_path / "b",
            20,
            "eval.before=false",
            "train.max_bad_steps=2",
            "train.save_steps=2",
            "train.loss_chunk_size=null",
        ),
    )
    from thinktune.train.engine.loop import TrainingStopped

    with pytest.raises(TrainingStopped, match=r"max_bad_steps=2; last checkpoint: .*step-4"):
        run_sft(cfg, QUIET)
    assert list_checkpoints(tmp_path / "b" / "checkpoints")[-1].name == "step-4"


def test_gradient_spike_rolls_back_with_halved_lr(tiny_model_dirs, tmp_path, monkeypatch):
    import thinktune.train.objectives.sft as speed  # where the SFT loss is computed

    real = speed.combined_loss
    calls = {"n": 0}

    def spiky(logits, batch, cfg, teacher_logits=None):
        loss, parts = real(logits, batch, cfg, teacher_logits)
        calls["n"] += 1
        return (loss * 1e4 if calls["n"] == 14 else loss), parts

    monkeypatch.setattr(speed, "combined_loss", spiky)
    cfg = load_config(
        None,
        base_sets(
            tiny_model_dirs["llama"],
            tmp_path,
            16,
            "eval.before=false",
            "eval.after=false",
            "train.save_steps=4",
            "train.loss_chunk_size=null",  # the patched loss is the full-logits one
            "train.spike_action=rollback",
            "train.spike_window=8",
            "train.max_grad_norm=null",
            "train.lr_scheduler=constant",
            "train.warmup_ratio=0",
        ),
    )
    summary = run_sft(cfg, QUIET)
    # The injected ×10⁴ step is caught; a natural outlier of the tiny random model may be caught too.
    assert summary["spikes"] >= 1 and summary["rollbacks"] == summary["spikes"] and summary["steps"] == 16
    lrs = [r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert lrs[0] == pytest.approx(5e-3) and lrs[-1] == pytest.approx(5e-3 * 0.5 ** summary["rollbacks"])


def test_validation_early_stopping_and_plateau(tiny_model_dirs, tmp_path):
    cfg = load_config(
        None,
        base_sets(
            tiny_model_dirs["llama"],
            tmp_path,
            30,
            "eval.before=false",
            "eval.after=false",
            "data.validation=bundled:arithmetic/test",
            "eval.max_samples=4",
            "train.eval_steps=2",
            "train.learning_rate=1e-9",
            "train.early_stopping_patience=2",
            "train.plateau_patience=1",
        ),
    )
    summary = run_sft(cfg, QUIET)
    assert summary["stopped_early"] and summary["steps"] < 30
    assert len(summary["validations"]) >= 3 and "val_loss" in summary["validations"][0]
    assert any("val_loss" in r for r in read_metrics(tmp_path / "metrics.jsonl"))


def kill_once_saved(args: list[str], checkpoint: Path) -> None:
    """Start `thinktune *args` and SIGKILL it as soon as `checkpoint` exists."""
    proc = cli(*args)
    deadline = time.time() + 240
    while time.time() < deadline and not checkpoint.exists():
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("recipe", ["dpo", "grpo", "grpo-reuse-dynamic"])
def test_policy_recipes_resume_after_sigkill_with_the_uninterrupted_curve(tiny_model_dirs, tmp_path, recipe):
    """grpo-reuse-dynamic: μ = 2 and dynamic sampling, killed after step 3, so the resumed step replays rollouts
    kept from before the kill and refills from the prompt stream where it stood."""
    from tests.train.test_dpo import write_prefs

    save = 3 if recipe == "grpo-reuse-dynamic" else 2
    steps, extra = 8, [f"train.save_steps={save}", "train.report_to=[]", "eval.before=false", "eval.after=false"]
    if recipe == "dpo":
        options = ["--data", str(write_prefs(tmp_path / "prefs.jsonl"))]
    else:
        options = [
            "--reward",
            "tests.train.test_grpo:distinct_chars",
            "-G",
            "2",
            "--set",
            "grpo.max_completion_length=6",
        ]
        extra.append("data.max_train_samples=16")
        if recipe == "grpo-reuse-dynamic":
            options += ["--dynamic-sampling", "--set", "grpo.num_iterations=2"]
        recipe = "grpo"

    def args(out):
        sets = [x for s in base_sets(tiny_model_dirs["llama"], out, steps, *extra) for x in ("--set", s)]
        return [recipe, *options, *sets, "--set", "train.batch_size=2"]

    full, killed = tmp_path / "full", tmp_path / "killed"
    done = cli(*args(full))
    assert done.wait(timeout=300) == 0, done.stderr.read()[-2000:]
    kill_once_saved(args(killed), killed / "checkpoints" / f"step-{3 if save == 3 else 4}")
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    last = list_checkpoints(killed / "checkpoints")[-1]

    resumed = cli(*args(killed), "--resume", "auto")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert "resumed from" in out and last.name in out
    keys = ["loss"] + (["reward"] if recipe == "grpo" else [])
    a, b = (read_metrics(d / "metrics.jsonl") for d in (full, killed))
    print(f"\n{recipe}: killed at {last.name}, resumed; step | " + " | ".join(f"{k} full, {k} resumed" for k in keys))
    for r, q in zip(a, b, strict=False):
        print(
            f"{r['step']} | " + " | ".join(f"{r.get(k, float('nan')):.6f}, {q.get(k, float('nan')):.6f}" for k in keys)
        )
    for key in keys:
        x, y = [r[key] for r in a if key in r], [r[key] for r in b if key in r]
        assert len(x) == len(y) == steps
        assert max(abs(u - v) for u, v in zip(x, y, strict=True)) < 1e-6, (key, x, y)
    assert json.loads((killed / "summary.json").read_text())["resumed_from"].endswith(last.name)


def scripted_loop(tiny_model_dirs, tmp_path, values: list[float], **train):
    """A TrainLoop on a tiny LoRA whose validation returns `values` in turn and records the weights it saw."""
    from tests.train.test_speed import tiny_loop
    from thinktune.config import TrainConfig

    cfg = TrainConfig(batch_size=2, max_steps=6, learning_rate=5e-2, report_to=[], warmup_ratio=0.0, **train)
    seen: list[dict[str, torch.Tensor]] = []

    def validate():
        seen.append({n: p.detach().clone() for n, p in params})
        return {"val_loss": values[len(seen) - 1]}

    loop, params, _ = tiny_loop(tiny_model_dirs, cfg, tmp_path, 6, validate=validate)
    return loop.run(), params, seen


@pytest.mark.parametrize(("values", "best"), [([5.0, 3.0, 4.0, 6.0], 2), ([1.0, 3.0, 4.0, 6.0], 0)])
def test_load_best_at_end_keeps_the_best_validated_weights(tiny_model_dirs, tmp_path, values, best):
    result, params, seen = scripted_loop(tiny_model_dirs, tmp_path, values, eval_steps=2, load_best_at_end=True)
    assert [v["step"] for v in result.validations] == [0, 2, 4, 6]  # the starting weights are validated too
    assert result.best_step == best
    kept = seen[best // 2]
    for name, p in params:
        torch.testing.assert_close(p.detach(), kept[name], rtol=0, atol=0)
    assert any(not torch.equal(kept[n], seen[-1][n]) for n, _ in params)  # the last step's weights were different


@pytest.mark.parametrize(("values", "best"), [([5.0, 3.0, 4.0, 6.0], 2), ([5.0, 4.0, 3.0, 2.0], None)])
def test_load_best_at_end_survives_a_resume(tiny_model_dirs, tmp_path, values, best):
    """checkpoints/best/ carries the best weights over a resume from step 4; a best found after step 4 (step 6)
    belongs to steps that run again, so the resumed run does not take it."""
    from tests.train.test_speed import tiny_loop

    train = {"eval_steps": 2, "save_steps": 2, "save_total_limit": 3, "load_best_at_end": True}
    first, _, seen = scripted_loop(tiny_model_dirs, tmp_path, values, **train)
    saved = json.loads((tmp_path / "checkpoints" / "best" / "best.json").read_text())
    assert saved == {"step": first.best_step, "value": min(values)}

    cfg = TrainConfig(batch_size=2, max_steps=6, learning_rate=5e-2, report_to=[], warmup_ratio=0.0, **train)
    again: list[dict[str, torch.Tensor]] = []

    def validate():  # step 6 only, worse than any best before it
        again.append({n: p.detach().clone() for n, p in params})
        return {"val_loss": 9.0}

    loop, params, _ = tiny_loop(tiny_model_dirs, cfg, tmp_path, 6, validate=validate)
    result = loop.run(str(tmp_path / "checkpoints" / "step-4"))
    assert [v["step"] for v in result.validations] == [6]
    expected = seen[best // 2] if best is not None else again[-1]
    assert result.best_step == (best if best is not None else 6)
    for name, p in params:
        torch.testing.assert_close(p.detach(), expected[name], rtol=0, atol=0)


def test_without_load_best_the_run_ends_with_the_last_weights(tiny_model_dirs, tmp_path):
    result, params, seen = scripted_loop(tiny_model_dirs, tmp_path, [3.0, 4.0, 6.0], eval_steps=2)
    assert result.best_step is None and [v["step"] for v in result.validations] == [2, 4, 6]
    for name, p in params:
        torch.testing.assert_close(p.detach(), seen[-1][name], rtol=0, atol=0)


def test_load_best_at_end_needs_validation(tiny_model_dirs, tmp_path):
    from thinktune.errors import ConfigError

    sets = base_sets(tiny_model_dirs["llama"], tmp_path, 2, "train.load_best_at_end=true")
    with pytest.raises(ConfigError, match="load_best_at_end needs train.eval_steps"):
        run_sft(load_config(None, sets), QUIET)
    with pytest.raises(ConfigError, match="eval_steps needs data.validation"):
        run_sft(load_config(None, [*sets, "train.eval_steps=1"]), QUIET)


def test_time_budget_stops_after_the_step_that_crosses_it(tiny_model_dirs, tmp_path):
    sets = base_sets(tiny_model_dirs["llama"], tmp_path, 30, "eval.before=false", "eval.after=false")
    summary = run_sft(load_config(None, [*sets, "train.max_minutes=1e-6"]), QUIET)
    assert summary["steps"] == 1 and summary["stopped_early"].startswith("time budget of 1e-06 min reached at step 1")
    assert len(losses(tmp_path)) == 1 and (tmp_path / "adapter" / "adapter_config.json").is_file()
    # a budget that is not reached changes nothing
    out = tmp_path / "roomy"
    roomy = run_sft(load_config(None, [*base_sets(tiny_model_dirs["llama"], out, 3), "train.max_minutes=60"]), QUIET)
    assert roomy["steps"] == 3 and roomy["stopped_early"] is None


def test_time_budget_counts_the_training_before_a_resume(tiny_model_dirs, tmp_path):
    sets = base_sets(tiny_model_dirs["llama"], tmp_path, 5, "eval.before=false", "eval.after=false")
    run_sft(load_config(None, [*sets, "train.max_steps=2", "train.save_steps=2"]), QUIET)
    position = tmp_path / "checkpoints" / "step-2" / "position.json"
    saved = json.loads(position.read_text())
    assert saved["step"] == 2 and saved["seconds"] > 0
    position.write_text(json.dumps({**saved, "seconds": 3600.0}))  # as if the first segment had trained an hour
    resumed = run_sft(load_config(None, [*sets, "train.max_minutes=30"]), QUIET, resume="auto")
    assert resumed["steps"] == 3 and resumed["stopped_early"].startswith("time budget of 30 min reached at step 3")


def test_tensorboard_mlflow_and_update_heatmap(tiny_model_dirs, tmp_path):
    pytest.importorskip("mlflow")
    cfg = load_config(
        None,
        base_sets(
            tiny_model_dirs["qwen3"],
            tmp_path,
            4,
            "eval.before=false",
            "eval.after=false",
            "train.report_to=[tensorboard,mlflow]",
            "train.layer_stats_steps=2",
        ),
    )
    run_sft(cfg, QUIET)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert all({"loss", "lr", "grad_norm", "tokens_per_second", "memory_mb"} <= set(r) for r in rows)
    stats = [r for r in rows if "update_norms" in r]
    assert [r["step"] for r in stats] == [2, 4] and any(k.startswith("L1.") for k in stats[0]["update_norms"])
    assert (tmp_path / "plots" / "update_heatmap.png").read_bytes()[:4] == b"\x89PNG"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(str(tmp_path / "tensorboard"))
    ev.Reload()
    assert [e.value for e in ev.Scalars("loss")] == pytest.approx([r["loss"] for r in rows])

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("thinktune").experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([r["loss"] for r in rows])


def test_gradient_checkpointing_trains_the_same(tiny_model_dirs, tmp_path):
    a = run_sft(
        load_config(
            None,
            base_sets(
                tiny_model_dirs["llama"], tmp_path / "a", 3, "eval.before=false", "eval.after=false", "method.dropout=0"
            ),
        ),
        QUIET,
    )
    b = run_sft(
        load_config(
            None,
            base_sets(
                tiny_model_dirs["llama"],
                tmp_path / "b",
                3,
                "eval.before=false",
                "eval.after=false",
                "method.dropout=0",
                "train.gradient_checkpointing=true",
            ),
        ),
        QUIET,
    )
    assert losses(tmp_path / "a") == pytest.approx(losses(tmp_path / "b"), abs=1e-5)
    assert a["final_loss"] == pytest.approx(b["final_loss"], abs=1e-5)


def test_two_processes_match_one_process_with_the_same_global_batch(tiny_model_dirs, tmp_path):
    model = tiny_model_dirs["llama"]
    common = ["eval.before=false", "eval.after=false", "method.dropout=0"]
    one = cli("train", *[x for s in base_sets(model, tmp_path / "one", 6, *common) for x in ("--set", s)])
    assert one.wait(timeout=300) == 0, one.stderr.read()[-2000:]
    two_sets = base_sets(model, tmp_path / "two", 6, *common, "train.batch_size=2", "train.save_steps=3")
    two = cli("train", "--num-processes", "2", *[x for s in two_sets for x in ("--set", s)])
    out, err = two.communicate(timeout=300)
    assert two.returncode == 0, err[-3000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 6
    # Same samples, same global batch; only float summation order differs (gloo all-reduce).
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4
    # The main process alone writes each checkpoint, its PEFT adapter included: the last one is the run's adapter.
    from safetensors.torch import load_file

    last = load_file(tmp_path / "two" / "checkpoints" / "step-6" / "adapter_model.safetensors")
    final = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    assert last.keys() == final.keys() and all(torch.equal(last[k], final[k]) for k in final)


def test_ewc_and_distillation_through_the_recipe(tiny_model_dirs, tmp_path):
    off = ["eval.before=false", "eval.after=false"]
    run_sft(
        load_config(None, base_sets(tiny_model_dirs["llama"], tmp_path / "a", 2, *off, "train.save_fisher=true")), QUIET
    )
    assert (tmp_path / "a" / "fisher.pt").is_file()
    run_sft(
        load_config(
            None,
            base_sets(
                tiny_model_dirs["llama"],
                tmp_path / "b",
                2,
                *off,
                "train.ewc_lambda=1e6",
                f"train.ewc_fisher={tmp_path / 'a' / 'fisher.pt'}",
            ),
        ),
        QUIET,
    )
    assert all("ewc" in r for r in read_metrics(tmp_path / "b" / "metrics.jsonl"))
    run_sft(
        load_config(
            None,
            base_sets(
                tiny_model_dirs["llama"],
                tmp_path / "c",
                2,
                *off,
                f"train.teacher={tiny_model_dirs['llama']}",
                "train.distill_alpha=0.5",
                "train.unlikelihood_weight=0.1",
                "train.contrastive_weight=0.1",
                "train.label_smoothing=0.1",
            ),
        ),
        QUIET,
    )
    row = read_metrics(tmp_path / "c" / "metrics.jsonl")[0]
    assert {"kl", "ce", "unlikelihood", "contrastive"} <= set(row)


def test_class_balanced_sampling_runs_from_the_data_stage(tiny_model_dirs, tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [
        {
            "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
            "category": "rare" if i == 0 else "common",
        }
        for i in range(20)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_sft(
        load_config(
            None,
            base_sets(
                tiny_model_dirs["llama"],
                tmp_path / "r",
                3,
                "eval.before=false",
                "eval.after=false",
                f"data.train=[{data}]",
                "data.balance_by=category",
            ),
        ),
        QUIET,
    )
    assert summary["steps"] == 3


def test_fp16_overflow_backs_the_loss_scale_off_and_training_goes_on(tiny_model_dirs, tmp_path):
    """A real GradScaler (it works on CPU) in Accelerate's place: an overflow of the scaled gradients halves the
    scale, is not counted as a bad step (max_bad_steps=0 would stop the run), and the following steps train."""
    from tests.train.test_speed import tiny_loop

    cfg = TrainConfig(batch_size=4, max_steps=4, learning_rate=1e-2, report_to=[], seed=0, max_bad_steps=0)
    loop, params, _ = tiny_loop(tiny_model_dirs, cfg, tmp_path, 4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    from accelerate.optimizer import AcceleratedOptimizer

    loop.accelerator.scaler = scaler  # as Accelerator(mixed_precision="fp16") sets it up on a GPU
    loop.optimizer = AcceleratedOptimizer(loop.optimizer.optimizer, device_placement=False, scaler=scaler)
    calls, loss_fn, hooks = [], loop.loss_fn, []

    def overflowing_loss(model, batch):
        calls.append(len(calls))
        for hook in hooks:
            hook.remove()
        if len(calls) == 2:  # this backward overflows (an inf gradient), the loss itself stays finite
            hooks.append(params[0][1].register_hook(lambda g: torch.full_like(g, math.inf)))
        return loss_fn(model, batch)

    loop.loss_fn = overflowing_loss
    before = [p.detach().clone() for _, p in params]
    result = loop.run()
    assert scaler.get_scale() == 2.0**9  # backed off once (growth needs 2000 clean steps)
    assert result.steps == 4 and result.bad_steps == 0 and len(calls) == 5
    assert math.isfinite(result.final_loss)
    assert all(torch.isfinite(p).all() for _, p in params)
    assert any(not torch.equal(a, p) for a, (_, p) in zip(before, params, strict=True))
