"""What a run directory offers for serving: its resolved config, its adapter, or a full model it wrote.

runs/<name>/config.yaml   the run's config (model, system prompt)
runs/<name>/adapter/      PEFT adapter → served under the run's name
runs/<name>/model/        full weights (full fine-tune or a merged export) → served instead of the base model
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from thinktune.config import RunConfig, load_config, validate
from thinktune.errors import UserError


@dataclass(frozen=True)
class RunArtifacts:
    dir: Path
    config: Path
    name: str
    adapter: Path | None
    model: Path | None


def read_run_dir(run_dir: Path) -> RunArtifacts:
    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml); pass the directory `thinktune train` wrote")
    adapter = run_dir / "adapter"
    model = run_dir / "model"
    artifacts = RunArtifacts(
        dir=run_dir,
        config=config,
        name=load_config(config).name,
        adapter=adapter if (adapter / "adapter_config.json").is_file() else None,
        model=model if (model / "config.json").is_file() else None,
    )
    if artifacts.adapter is None and artifacts.model is None:
        raise UserError(f"{run_dir}: has neither adapter/ nor model/ to serve (did training finish?)")
    return artifacts


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
