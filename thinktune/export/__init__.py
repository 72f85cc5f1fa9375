"""Export a model (base + optional adapter or trained tensors) to a deployable artefact, each one verified against
its source.

    thinktune export --run-dir runs/quickstart --format gguf --gguf-type q8_0 -o exports/gguf

`EXPORTERS` maps a format name to its module's `Exporter`: `check(model_type, options)` fails fast before the model
is loaded (unsupported architecture, missing package or GPU), `export(source, out_dir, options)` writes the artefact
and returns its verification numbers; `images` says it exports a vision-language model (Qwen2.5-VL, ...) whole,
vision tower and image processor included (the other formats refuse one before loading it). Adding a format = one
module + one line here. `run_export` runs both, checks the numbers against their tolerances (verify.py), writes them
with the limits to `OUT/verify.json` and the model card to `OUT/README.md` (model_card.py), then fails if a figure
is beyond its limit; hub.py pushes the folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinktune.config import ModelConfig
from thinktune.errors import ModelNotFoundError, UserError
from thinktune.export import adapter as adapter_export
from thinktune.export import gguf_file, gguf_lora, int8, merged, onnx_model
from thinktune.export.model_card import find_run_dir, write_model_card
from thinktune.export.source import ExportOptions, ExportSource, base_config, load_source, takes_images
from thinktune.export.verify import VerificationFailed, verify
from thinktune.runs import PEFT_CONFIG, Trained, find_trained, read_method_file


@dataclass(frozen=True)
class Exporter:
    check: Callable[[str, ExportOptions], None]
    export: Callable[[ExportSource, Path, ExportOptions], dict[str, Any]]
    needs_adapter: bool = False
    images: bool = False  # exports a vision-language model (vision tower, image processor) and checks it on an image


EXPORTERS: dict[str, Exporter] = {
    "adapter": Exporter(adapter_export.check, adapter_export.export_adapter, needs_adapter=True, images=True),
    "merged": Exporter(merged.check, merged.export_merged, images=True),
    "onnx": Exporter(onnx_model.check, onnx_model.export_onnx),
    "int8": Exporter(int8.check, int8.export_int8),
    "gguf": Exporter(gguf_file.check, gguf_file.export_gguf),
    "gguf-lora": Exporter(gguf_lora.check, gguf_lora.export_gguf_lora, needs_adapter=True),
}

__all__ = ["EXPORTERS", "ExportOptions", "ExportSource", "load_source", "run_export", "trained_source"]


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
    before/after evaluation. `adapter`: a PEFT adapter, or a freeze/ESFT run's model/ folder (or the run itself),
    whose trained tensors are written into the base."""
    exporter = EXPORTERS.get(fmt)
    if exporter is None:
        raise UserError(f"unknown export format '{fmt}'; choose one of: {', '.join(EXPORTERS)}")
    trained = trained_source(adapter)
    if exporter.needs_adapter and trained is None:
        raise UserError(f"--format {fmt} needs an adapter: pass --adapter DIR or a --run-dir that has one")
    if exporter.needs_adapter and trained.kind != "adapter":
        raise UserError(
            f"--format {fmt} needs a PEFT adapter; {trained.path} holds {trained.describe()} (freeze, ESFT): "
            "export --format merged, gguf, onnx or int8"
        )
    start = time.perf_counter()
    config = base_config(model_cfg)
    if takes_images(config) and not exporter.images:
        able = " and ".join(f"--format {name}" for name, e in EXPORTERS.items() if e.images)
        raise UserError(f"--format {fmt} does not export vision-language models ({config.model_type}); only {able} do")
    exporter.check(config.model_type, options)
    if options.check_with and fmt not in ("gguf", "gguf-lora"):
        raise UserError(f"--check-with {', '.join(options.check_with)} checks GGUF files; --format {fmt} has none")
    source = load_source(model_cfg, trained)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    numbers = exporter.export(source, out, options)
    record = {"format": fmt, "source": source.description, **numbers, "seconds": time.perf_counter() - start}
    failed = verify(fmt, record)
    (out / "verify.json").write_text(json.dumps(record, indent=2) + "\n")
    write_model_card(
        out,
        fmt,
        model_cfg.name_or_path,
        run_dir=find_run_dir(run_dir, adapter),
        record=record,
        method=_trained_method(trained),
        images=takes_images(config),
    )
    if failed and options.verify:
        raise VerificationFailed(
            f"{fmt} export beyond tolerance: {'; '.join(failed)} (figures in {out / 'verify.json'}; "
            "--no-verify keeps the artefact without this check)",
            record,
        )
    return record


def trained_source(path: Path | None) -> Trained | None:
    """What `--adapter` (or a run) gives the export: a PEFT adapter or a freeze/ESFT run's trained tensors."""
    if path is None:
        return None
    trained = find_trained(path)
    if trained is None:
        raise ModelNotFoundError(f"{path}: not a PEFT adapter directory (no {PEFT_CONFIG}) nor a run's trained model")
    if trained.kind == "full":
        raise UserError(f"{trained.path}: a complete model, not an adapter; export it with --model {trained.path}")
    return trained


def _trained_method(trained: Trained | None) -> str | None:
    """`lora`, `dora`, `freeze`, … from the trained folder (a run's config.yaml says it too; a bare folder has only
    this)."""
    if trained is None:
        return None
    if trained.kind == "tensors":
        return (read_method_file(trained.path) or {}).get("method")
    stored = json.loads((trained.path / PEFT_CONFIG).read_text())
    return "dora" if stored.get("use_dora") else str(stored.get("peft_type", "")).lower() or None
