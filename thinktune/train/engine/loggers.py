"""Metric sinks: metrics.jsonl (always) plus the experiment trackers named in `train.report_to`.

Every tracker gets the same scalars at the same steps and the run's config (flattened `section.key` params):

- tensorboard: event files in `run_dir/tensorboard`
- mlflow: MlflowClient on `train.mlflow_tracking_uri` (default: sqlite `run_dir/mlflow.db`)
- wandb: `WANDB_DIR` or `run_dir`; `WANDB_MODE=offline` writes the run's .wandb log without an account
- swanlab: `SWANLAB_LOGDIR` or `run_dir/swanlog`; `SWANLAB_MODE=offline` (or `local`) without an account
- trackio: its local SQLite store (`TRACKIO_DIR`, default ~/.cache/huggingface/trackio); `trackio show` reads it

`check_trackers` runs before any weights load: a tracker whose package is missing is one line naming the extra.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinktune.errors import EnvironmentProblem

PROJECT = "thinktune"


@dataclass(frozen=True)
class TrackedRun:
    """What every tracker is told about the run."""

    dir: Path
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    mlflow_uri: str | None = None


class TensorBoardSink:
    def __init__(self, run: TrackedRun):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.dir / "tensorboard"))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class MLflowSink:
    """Uses MlflowClient (no global active run): safe beside anything else in the process."""

    def __init__(self, run: TrackedRun):
        from mlflow.tracking import MlflowClient

        self.uri = run.mlflow_uri or f"sqlite:///{(run.dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(self.uri)
        exp = self.client.get_experiment_by_name(PROJECT)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(PROJECT)
        self.run_id = self.client.create_run(exp_id, run_name=run.name).info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)[:500]) for k, v in run.params.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch: send them all, in batches
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.client.log_metric(self.run_id, k.replace("/", "."), v, step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbSink:
    def __init__(self, run: TrackedRun):
        import wandb

        self.run = _start(
            "wandb",
            "run `wandb login`, or set WANDB_MODE=offline",
            lambda: wandb.init(
                project=os.environ.get("WANDB_PROJECT", PROJECT),
                name=run.name,
                config=run.params,
                dir=os.environ.get("WANDB_DIR") or str(run.dir),
                reinit="create_new",  # one process may train several runs (tests, sweeps)
            ),
        )

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class SwanLabSink:
    def __init__(self, run: TrackedRun):
        import swanlab

        self.run = _start(
            "swanlab",
            "run `swanlab login`, or set SWANLAB_MODE=offline",
            lambda: swanlab.init(
                project=os.environ.get("SWANLAB_PROJ_NAME", PROJECT),
                name=run.name,
                config=run.params,
                log_dir=os.environ.get("SWANLAB_LOGDIR") or str(run.dir / "swanlog"),
                reinit=True,
            ),
        )

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioSink:
    def __init__(self, run: TrackedRun):
        import trackio

        self.run = _start(
            "trackio", "see `trackio status`", lambda: trackio.init(project=PROJECT, name=run.name, config=run.params)
        )

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


def _start(name: str, hint: str, init):
    """A tracker that cannot start (no login, no TTY to ask for one) is a one-line environment problem."""
    try:
        return init()
    except Exception as e:  # each tracker raises its own types; the user needs the first line and the fix
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EnvironmentProblem(f"train.report_to: {name} could not start ({first}); {hint}") from None


# name → (sink, importable module, pip extra that installs it; None = a core dependency)
TRACKERS: dict[str, tuple[type, str, str | None]] = {
    "tensorboard": (TensorBoardSink, "tensorboard", None),
    "mlflow": (MLflowSink, "mlflow", "mlflow"),
    "wandb": (WandbSink, "wandb", "wandb"),
    "swanlab": (SwanLabSink, "swanlab", "swanlab"),
    "trackio": (TrackioSink, "trackio", "trackio"),
}


def check_trackers(loggers: list[str]) -> None:
    """Before any weights load: every named tracker's package is importable."""
    for name in loggers:
        _, module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            fix = f"pip install 'thinktune[{extra}]'" if extra else f"pip install {module}"
            raise EnvironmentProblem(f"train.report_to includes {name}, which is not installed: {fix}")


class MetricsLog:
    """Append one JSON object per logged step to metrics.jsonl and mirror the scalars to the chosen trackers."""

    def __init__(
        self,
        run_dir: Path,
        loggers: list[str] = ("tensorboard",),
        mlflow_uri: str | None = None,
        run_name: str = "run",
        params: dict[str, Any] | None = None,
    ):
        self.path = run_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_trackers(loggers)
        run = TrackedRun(run_dir, run_name, params or {}, mlflow_uri)
        self.sinks: list = []
        try:
            for name in loggers:
                self.sinks.append(TRACKERS[name][0](run))
        except BaseException:
            for sink in self.sinks:  # the trackers already started end their runs
                sink.close()
            raise
        self._file = open(self.path, "a")

    def log(self, step: int, values: dict[str, Any]) -> None:
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        scalars = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for name in ("grad_norms", "update_norms"):
            for k, v in (values.get(name) or {}).items():
                scalars[f"{name}/{k}"] = float(v)
        for sink in self.sinks:
            sink.log(step, scalars)

    def close(self) -> None:
        self._file.close()
        for sink in self.sinks:
            sink.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
