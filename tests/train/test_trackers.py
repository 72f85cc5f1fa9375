"""Experiment trackers (train.report_to): one tiny CLI run feeds all five, each read back from its own offline store
with the same scalars as metrics.jsonl and the run config; a missing package is one line before any weights load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thinktune.train.engine.loggers import read_metrics

ROOT = Path(__file__).parents[2]
TRACKERS = ["tensorboard", "mlflow", "wandb", "swanlab", "trackio"]


def train_args(model_dir, out, loggers):
    sets = [
        f"model.name_or_path={model_dir}",
        f"output_dir={out}",
        "name=tracked",
        "data.test=null",
        "data.max_train_samples=24",
        "data.max_length=512",
        "train.max_steps=3",
        "train.batch_size=4",
        "train.layer_stats_steps=2",
        f"train.report_to=[{','.join(loggers)}]",
    ]
    return ["train", *[x for s in sets for x in ("--set", s)]]


def run(args: list[str], env: dict[str, str], code: str | None = None) -> subprocess.CompletedProcess:
    head = ["-c", code] if code else ["-m", "thinktune"]
    return subprocess.run(
        [sys.executable, *head, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200", **env},
        timeout=600,
    )


def expected_scalars(rows: list[dict]) -> dict[int, dict[str, float]]:
    """What MetricsLog sends every tracker: the numeric fields, plus grad_norms/* and update_norms/*."""
    out: dict[int, dict[str, float]] = {}
    for r in rows:
        numbers = {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        s = {k: float(v) for k, v in numbers.items() if k != "step"}
        for name in ("grad_norms", "update_norms"):
            s.update({f"{name}/{k}": float(v) for k, v in (r.get(name) or {}).items()})
        out.setdefault(r["step"], {}).update(s)
    return out


def same(got: dict[int, dict[str, float]], want: dict[int, dict[str, float]], tracker: str) -> None:
    assert sorted(got) == sorted(want), tracker
    for step, scalars in want.items():
        for k, v in scalars.items():
            assert got[step][k] == pytest.approx(v, rel=1e-6), (tracker, step, k)


def test_every_tracker_gets_the_same_scalars_and_config(tiny_model_dirs, tmp_path):
    for module in ("mlflow", "wandb", "swanlab", "trackio"):
        pytest.importorskip(module)
    out = tmp_path / "run"
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb"),
        "WANDB_SILENT": "true",
        "SWANLAB_MODE": "offline",
        "SWANLAB_LOGDIR": str(tmp_path / "swanlog"),
        "TRACKIO_DIR": str(tmp_path / "trackio"),
    }
    (tmp_path / "wandb").mkdir()
    r = run(train_args(tiny_model_dirs["qwen3"], out, TRACKERS), env)
    assert r.returncode == 0, r.stderr[-3000:]
    want = expected_scalars(read_metrics(out / "metrics.jsonl"))
    assert sorted(want) == [1, 2, 3] and any(k.startswith("grad_norms/") for k in want[2])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    ev.Reload()
    tb: dict[int, dict[str, float]] = {}
    for tag in ev.Tags()["scalars"]:
        for e in ev.Scalars(tag):
            tb.setdefault(e.step, {})[tag] = e.value
    same(tb, want, "tensorboard")  # float32 in the event file: equal to rel 1e-6

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    mrun = client.search_runs([client.get_experiment_by_name("thinktune").experiment_id])[0]
    mlflow = {}
    for key in mrun.data.metrics:
        for m in client.get_metric_history(mrun.info.run_id, key):
            mlflow.setdefault(m.step, {})[key] = m.value
    same(mlflow, {s: {k.replace("/", "."): v for k, v in d.items()} for s, d in want.items()}, "mlflow")
    assert mrun.data.params["train.max_steps"] == "3"
    assert len(mrun.data.params) > 100 and any(k.startswith("serve.") for k in mrun.data.params)  # the whole config

    # wandb offline: the run's .wandb transaction log, read with wandb's own reader (`wandb leet inspect --json`).
    (wandb_file,) = (tmp_path / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    records = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(wandb_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    wandb_rows, wandb_config = {}, {}
    for line in records.splitlines():
        rec = json.loads(line)
        if rec["type"] == "history":
            item = rec["history"]["item"]
            wandb_rows.setdefault(item["_step"], {}).update({k: v for k, v in item.items() if not k.startswith("_")})
        elif rec["type"] == "run":
            wandb_config = rec["run"]["config"]["update"]
    same(wandb_rows, want, "wandb")
    assert wandb_config["train.max_steps"] == 3 and wandb_config["name"] == "tracked"

    # swanlab offline: the run's .swanlab record log, read with the reader `swanlab sync` uses.
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    (swan_file,) = (tmp_path / "swanlog").glob("run-*/run-*.swanlab")
    reader = DataStoreReader()
    reader.open(swan_file)
    swan: dict[int, dict[str, float]] = {}
    for raw in reader:
        rec = Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "scalar":
            swan.setdefault(rec.scalar.step, {})[rec.scalar.key] = rec.scalar.value.number
    reader.close()
    same(swan, want, "swanlab")
    (swan_config,) = (tmp_path / "swanlog").glob("run-*/files/config.yaml")
    assert "train.max_steps" in swan_config.read_text()

    # trackio: its local SQLite store under TRACKIO_DIR (read in a process that sees that directory at import).
    read = (
        "import json; from trackio.sqlite_storage import SQLiteStorage as S; (run,) = S.get_runs('thinktune'); "
        "print(json.dumps({'logs': S.get_logs('thinktune', run), 'config': S.get_run_config('thinktune', run)}))"
    )
    r = run([], {"TRACKIO_DIR": str(tmp_path / "trackio")}, code=read)
    assert r.returncode == 0, r.stderr[-2000:]
    stored = json.loads(r.stdout.strip().splitlines()[-1])
    trackio = {}
    for row in stored["logs"]:
        trackio.setdefault(row["step"], {}).update({k: v for k, v in row.items() if k not in ("step", "timestamp")})
    same(trackio, want, "trackio")
    assert stored["config"]["train.max_steps"] == 3


def test_a_missing_tracker_package_is_one_line_before_loading(tiny_model_dirs, tmp_path):
    # sys.modules[name] = None makes the package unimportable (find_spec answers None), as if not installed.
    code = "import sys; sys.modules['wandb'] = None; sys.argv[0] = 'thinktune'; from thinktune.cli import main; main()"
    r = run(train_args(tiny_model_dirs["llama"], tmp_path / "run", ["tensorboard", "wandb"]), {}, code=code)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'thinktune[wandb]'" in lines[0], r.stderr
    assert "model" not in r.stdout  # stopped before any weights loaded
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
