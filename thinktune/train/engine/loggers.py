"""Metric sinks: metrics.jsonl (always), TensorBoard event files, and an MLflow store (local sqlite by default)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from thinktune.errors import EnvironmentProblem


class TensorBoardSink:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class MLflowSink:
    """Uses MlflowClient (no global active run): safe beside anything else in the process."""

    def __init__(self, run_dir: Path, uri: str | None, run_name: str, params: dict[str, Any]):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise EnvironmentProblem("train.loggers includes mlflow: pip install mlflow") from None
        self.uri = uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(self.uri)
        exp = self.client.get_experiment_by_name("thinktune")
        exp_id = exp.experiment_id if exp else self.client.create_experiment("thinktune")
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        for k, v in list(params.items())[:100]:
            self.client.log_param(self.run_id, k, str(v)[:500])

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.client.log_metric(self.run_id, k.replace("/", "."), v, step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class MetricsLog:
    """Append one JSON object per logged step to metrics.jsonl and mirror the scalars to the chosen loggers."""

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
        self._file = open(self.path, "a")
        self.sinks: list = []
        if "tensorboard" in loggers:
            self.sinks.append(TensorBoardSink(run_dir))
        if "mlflow" in loggers:
            self.sinks.append(MLflowSink(run_dir, mlflow_uri, run_name, params or {}))

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
