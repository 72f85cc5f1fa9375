"""Export a model (base + optional adapter) to a deployable artefact, each one verified against its source.

    thinktune export --run-dir runs/quickstart --format gguf --gguf-type q8_0 -o exports/gguf

`EXPORTERS` maps a format name to its module's `Exporter`: `check(model_type, options)` fails fast before the model
is loaded (unsupported architecture, missing package or GPU), `export(source, out_dir, options)` writes the artefact
and returns its verification numbers. Adding a format = one module + one line here. `run_export` runs both, checks
the numbers against their tolerances (verify.py), writes them with the limits to `OUT/verify.json` and the model card
to `OUT/README.md` (model_card.py), then fails if a figure is beyond its limit; hub.py pushes the folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinktune.config import ModelConfig
from thinktune.errors import UserError
from thinktune.export import adapter as adapter_export
from thinktune.export import gguf_file, int8, merged, onnx_model
from thinktune.export.model_card import find_run_dir, write_model_card
from thinktune.export.source import ExportOptions, ExportSource, load_source, model_type
from thinktune.export.verify import VerificationFailed, verify


@dataclass(frozen=True)
class Exporter:
    check: Callable[[str, ExportOptions], None]
    export: Callable[[ExportSource, Path, ExportOptions], dict[str, Any]]
    needs_adapter: bool = False


EXPORTERS: dict[str, Exporter] = {
    "adapter": Exporter(adapter_export.check, adapter_export.export_adapter, needs_adapter=True),
    "merged": Exporter(merged.check, merged.export_merged),
    "onnx": Exporter(onnx_model.check, onnx_model.export_onnx),
    "int8": Exporter(int8.check, int8.export_int8),
    "gguf": Exporter(gguf_file.check, gguf_file.export_gguf),
}

__all__ = ["EXPORTERS", "ExportOptions", "ExportSource", "load_source", "run_export"]


def run_export(
    model_cfg: ModelConfig,
    fmt: str,
    out: Path,
    options: ExportOptions,
    adapter: Path | None = None,
    run_dir: Path | None = None,
) -> dict[str, Any]:
    """Export one format into `out` and return (and save as `out/verify.json`) its verification numbers; the
    model card (`out/README.md`) names the base and, for a run (`run_dir`, or the adapter's parent), its config and
    before/after evaluation."""
    exporter = EXPORTERS.get(fmt)
    if exporter is None:
        raise UserError(f"unknown export format '{fmt}'; choose one of: {', '.join(EXPORTERS)}")
    if exporter.needs_adapter and adapter is None:
        raise UserError(f"--format {fmt} needs an adapter: pass --adapter DIR or a --run-dir that has one")
    start = time.perf_counter()
    exporter.check(model_type(model_cfg), options)
    if options.check_with and fmt != "gguf":
        raise UserError(f"--check-with {', '.join(options.check_with)} checks GGUF files; --format {fmt} has none")
    source = load_source(model_cfg, adapter)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    numbers = exporter.export(source, out, options)
    record = {"format": fmt, "source": source.description, **numbers, "seconds": time.perf_counter() - start}
    failed = verify(fmt, record)
    (out / "verify.json").write_text(json.dumps(record, indent=2) + "\n")
    method = _adapter_method(adapter)
    write_model_card(
        out, fmt, model_cfg.name_or_path, run_dir=find_run_dir(run_dir, adapter), record=record, method=method
    )
    if failed and options.verify:
        raise VerificationFailed(
            f"{fmt} export beyond tolerance: {'; '.join(failed)} (figures in {out / 'verify.json'}; "
            "--no-verify keeps the artefact without this check)",
            record,
        )
    return record


def _adapter_method(adapter: Path | None) -> str | None:
    """`lora`, `dora`, … from the adapter's config (a run's config.yaml says it too; a bare adapter has only this)."""
    config = Path(adapter) / "adapter_config.json" if adapter else None
    if config is None or not config.is_file():
        return None
    stored = json.loads(config.read_text())
    return "dora" if stored.get("use_dora") else str(stored.get("peft_type", "")).lower() or None
