"""`thinktune export`: merged checkpoint, ONNX, int8, GGUF or GGUF LoRA, each verified against its source
(OUT/verify.json).

thinktune export --run-dir runs/quickstart --format gguf --gguf-type q8_0 -o exports/gguf
thinktune export --run-dir runs/quickstart --format gguf-lora --gguf-type f16 -o exports/gguf-lora   # llama.cpp --lora
thinktune export --model smollm2-135m-instruct --adapter runs/quickstart/adapter --format merged -o exports/merged
thinktune export --run-dir runs/quickstart --format adapter --push-to-hub me/quickstart-lora --dry-run
thinktune export --run-dir runs/freeze-run --format merged     # freeze/ESFT: the base with the trained tensors in
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from thinktune.cli.app import ConfigOpt, OfflineOpt, SetOpt, app, build_config, console, user_errors
from thinktune.errors import UserError
from thinktune.progress import status
from thinktune.runs import EXPORT, open_run


@app.command()
@user_errors
def export(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    model: Annotated[str | None, typer.Option(help="Model: bundled name, HF directory or .gguf.")] = None,
    adapter: Annotated[
        Path | None,
        typer.Option(help="What a run trained, to merge in: a PEFT adapter, or a freeze/ESFT run's model/ folder."),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(help="A training run: the base from RUN/config.yaml plus what it trained."),
    ] = None,
    format_: Annotated[
        str | None,
        typer.Option(
            "--format", "-f", help="merged | onnx | int8 | gguf | gguf-lora | adapter (default: export.formats)."
        ),
    ] = None,
    gguf_type: Annotated[str | None, typer.Option(help="GGUF tensor type: f32 | f16 | bf16 | q8_0 | q4_0.")] = None,
    kv_cache: Annotated[
        bool | None, typer.Option("--kv-cache/--no-kv-cache", help="ONNX/int8: graph with past key values.")
    ] = None,
    onnx_exporter: Annotated[str, typer.Option(help="ONNX: dynamo (falls back to torchscript) or torchscript.")] = (
        "dynamo"
    ),
    max_shard_size: Annotated[str, typer.Option(help="merged: largest safetensors shard, e.g. 2GB.")] = "2GB",
    dtype: Annotated[
        str, typer.Option(help="merged: stored dtype: auto (as the base) | float32 | bfloat16 | float16.")
    ] = "auto",
    quant_device: Annotated[
        str, typer.Option(help="int8: cpu (onnxruntime dynamic int8) or cuda (bitsandbytes).")
    ] = "cpu",
    bits: Annotated[int, typer.Option(help="int8 on cuda: 8 (LLM.int8) or 4 (NF4).")] = 8,
    int8_scheme: Annotated[
        str, typer.Option(help="int8 on cpu: blockwise (MatMulNBits) or per-tensor (quantize_dynamic).")
    ] = "blockwise",
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", "-o", help="Artefact directory (default: RUN/export/FORMAT).")
    ] = None,
    push_to_hub: Annotated[
        str | None, typer.Option(help="Upload the exported folder to this Hub model repo (org/name).")
    ] = None,
    private: Annotated[bool, typer.Option(help="--push-to-hub: create the repo private.")] = False,
    revision: Annotated[
        str | None, typer.Option(help="--push-to-hub: branch to commit to (created if missing; default main).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="--push-to-hub: export, then list the files that would be sent; send nothing.")
    ] = False,
    check_with: Annotated[
        list[str] | None,
        typer.Option(
            help="gguf: also load the file in this runtime, compare it with the source: llama-cpp (gguf-lora: always)."
        ),
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Exit 1 when a parity figure is beyond its tolerance.")
    ] = True,
    offline: OfflineOpt = False,
) -> None:
    """Export a model (+ adapter) and verify the artefact against it; numbers are printed and saved as verify.json.

    Example: `thinktune export --run-dir runs/quickstart --format gguf --gguf-type q4_0 -o exports/q4`
    """
    unknown = sorted(set(check_with or []) - {"llama-cpp"})
    if unknown:
        raise UserError(f"--check-with {', '.join(unknown)}: unknown runtime; choose llama-cpp")
    if (private or revision or dry_run) and not push_to_hub:
        raise UserError("--private, --revision and --dry-run go with --push-to-hub REPO")
    sets = list(set_ or [])
    if run_dir is not None:
        run = open_run(run_dir)
        config = config or run.config
        sets.append(f"output_dir={run_dir}")
        trained = run.produced()
        if trained is not None and trained.kind == "full":
            model = model or str(trained.path)  # a full fine-tune saved a complete model: it is the model
        elif trained is not None:
            adapter = adapter or trained.path  # a PEFT adapter, or the tensors a freeze/ESFT run changed
    sets += [f"model.name_or_path={model}"] if model else []
    sets += [f"export.formats=[{format_}]"] if format_ else []
    sets += [f"export.gguf_type={gguf_type}"] if gguf_type else []
    sets += [f"export.onnx_kv_cache={str(kv_cache).lower()}"] if kv_cache is not None else []
    cfg = build_config(config, sets)  # config errors show before torch is imported
    formats = cfg.export.formats
    if push_to_hub:
        from thinktune.export.hub import check_can_push, check_repo_id

        check_repo_id(push_to_hub)
        if len(formats) > 1:
            raise UserError(f"--push-to-hub sends one folder: pick one format (--format), not {', '.join(formats)}")
        check_can_push(dry_run)  # before a long export, not after

    from thinktune.export import ExportOptions, run_export
    from thinktune.export.verify import VerificationFailed

    options = ExportOptions.from_config(
        cfg.export,
        onnx_exporter=onnx_exporter,
        max_shard_size=max_shard_size,
        merged_dtype=dtype,
        quant_device=quant_device,
        quant_bits=bits,
        int8_scheme=int8_scheme,
        verify=verify,
        check_with=tuple(dict.fromkeys(check_with or [])),
    )
    for fmt in formats:
        out = output_dir or cfg.run_dir / EXPORT
        out = out / fmt if len(formats) > 1 or output_dir is None else out
        try:
            with status(console, f"exporting {fmt} to {out}"):
                record = run_export(cfg.model, fmt, out, options, adapter, run_dir)
        except VerificationFailed as e:
            console.print(verification_table(e.record))
            raise
        console.print(verification_table(record))
        console.print(f"artefact: [bold]{record['artefact']}[/] · numbers: {out / 'verify.json'}")
        if push_to_hub:
            push(out, push_to_hub, private, revision, dry_run)


def push(folder: Path, repo_id: str, private: bool, revision: str | None, dry_run: bool) -> None:
    from thinktune.export.hub import plan_push, push_folder

    plan = plan_push(folder, repo_id, private, revision)
    if dry_run:
        for line in plan.describe():
            typer.echo(line)
        return
    with status(console, f"pushing {len(plan.files)} files ({plan.total_bytes:,} bytes) to {repo_id}"):
        url = push_folder(plan)
    console.print(f"pushed to [bold]{repo_id}[/] ({revision or 'main'}): {url}", soft_wrap=True)


def verification_table(record: dict[str, Any]) -> Table:
    table = Table(title=f"{record['format']} export of {record['source']}", show_header=False)
    table.add_column("")
    table.add_column("")
    for key, value in _flat(record):
        if key not in ("format", "source", "artefact", "checks", "verified"):
            table.add_row(key.replace("_", " "), _show(value))
    for row in record.get("checks", []):
        mark = "[green]ok[/]" if row["passed"] else "[bold red]FAILED[/]"
        table.add_row(f"check {row['figure']}", f"{_show(row['value'])} (limit {row['limit']}) {mark}")
    return table


def _flat(record: dict[str, Any], prefix: str = ""):
    for key, value in record.items():
        if isinstance(value, dict) and key != "tensor_types":
            yield from _flat(value, f"{prefix}{key} ")
        else:
            yield prefix + key, value


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(map(str, value))
    return str(value)
