"""What a run directory offers for serving; its layout and what a run produced come from thinktune/runs.py.

runs/<name>/config.yaml   the run's config (model, system prompt)
runs/<name>/adapter/      PEFT adapter → served under the run's name, beside the base model
runs/<name>/model/        trained tensors (freeze, ESFT) → the base with them written in, served under the run's name
                          a full model (full fine-tune, or a merged export) → served under the run's name
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from thinktune.config import RunConfig, validate
from thinktune.errors import UserError
from thinktune.runs import RunDir, Trained, open_run


@dataclass(frozen=True)
class RunArtifacts:
    run: RunDir
    name: str
    trained: Trained

    @property
    def dir(self) -> Path:
        return self.run.path

    @property
    def config(self) -> Path:
        return self.run.config

    @property
    def adapter(self) -> Path | None:
        return self.trained.path if self.trained.kind == "adapter" else None

    @property
    def tensors(self) -> Path | None:
        """The changed tensors of the base, to write into it before serving."""
        return self.trained.path if self.trained.kind == "tensors" else None

    @property
    def model(self) -> Path | None:
        return self.trained.path if self.trained.kind == "full" else None


def read_run_dir(run_dir: Path) -> RunArtifacts:
    run = open_run(run_dir)
    trained = run.produced()
    if trained is None:
        raise UserError(f"{run_dir}: has neither adapter/ nor model/ to serve (did training finish?)")
    return RunArtifacts(run, run.name, trained)


def with_adapters(cfg: RunConfig, adapters: dict[str, str], source: str = "--adapter") -> RunConfig:
    """`cfg` with more served adapters (name → directory); re-validated, names kept as given (dots included)."""
    if not adapters:
        return cfg
    raw = cfg.model_dump(mode="json")
    raw["serve"]["adapters"] = {**raw["serve"]["adapters"], **adapters}
    return validate(raw, source)


def parse_adapter_options(items: list[str]) -> dict[str, str]:
    """`--adapter NAME=PATH` (or just PATH: named after its directory) → {name: path}."""
    adapters = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name, item
        if not name or not path:
            raise UserError(f"--adapter {item!r}: expected NAME=PATH, e.g. --adapter math=runs/math/adapter")
        adapters[name] = path
    return adapters
