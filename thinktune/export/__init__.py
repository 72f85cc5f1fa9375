"""Export a model (base + optional adapter) to a deployable artefact, each one verified against its source.

    thinktune export --run-dir runs/quickstart --format gguf --gguf-type q8_0 -o exports/gguf

`EXPORTERS` maps a format name to a function `(ExportSource, out_dir, ExportOptions) -> verification dict`; adding a
format = one module + one line here. `run_export` loads the source, calls the exporter and writes the verification
numbers to `OUT/verify.json`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from thinktune.config import ModelConfig
from thinktune.errors import UserError
from thinktune.export.gguf_file import export_gguf
from thinktune.export.int8 import export_int8
from thinktune.export.merged import export_merged
from thinktune.export.onnx_model import export_onnx
from thinktune.export.source import ExportOptions, ExportSource, load_source

Exporter = Callable[[ExportSource, Path, ExportOptions], dict[str, Any]]

EXPORTERS: dict[str, Exporter] = {
    "merged": export_merged,
    "onnx": export_onnx,
    "int8": export_int8,
    "gguf": export_gguf,
}

__all__ = ["EXPORTERS", "ExportOptions", "ExportSource", "load_source", "run_export"]


def run_export(
    model_cfg: ModelConfig, fmt: str, out: Path, options: ExportOptions, adapter: Path | None = None
) -> dict[str, Any]:
    """Export one format into `out` and return (and save as `out/verify.json`) its verification numbers."""
    exporter = EXPORTERS.get(fmt)
    if exporter is None:
        raise UserError(f"unknown export format '{fmt}'; choose one of: {', '.join(EXPORTERS)}")
    start = time.perf_counter()
    source = load_source(model_cfg, adapter)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    numbers = exporter(source, out, options)
    record = {"format": fmt, "source": source.description, **numbers, "seconds": time.perf_counter() - start}
    (out / "verify.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
