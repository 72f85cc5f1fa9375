"""`thinktune serve` (OpenAI-compatible server) and `thinktune deploy` (Dockerfile + Kubernetes manifests).

thinktune serve --run-dir runs/quickstart            # base model + the run's adapter, on 127.0.0.1:8000
thinktune serve --run-dir runs/freeze-run            # a freeze/ESFT/full run: the trained model, under the run's name
thinktune serve --model smollm2-135m-instruct --adapter math=runs/math/adapter --port 8080
thinktune serve --run-dir runs/contracts --rag-index runs/contracts-index   # passages per request, `sources` back
thinktune serve --run-dir runs/quickstart --backend llamacpp   # the run's GGUF export, by llama.cpp on the CPU
thinktune serve --model exports/gguf/model.gguf --backend auto # llamacpp on a CPU-only machine, else transformers
thinktune serve --run-dir runs/quickstart --prompt-lookup 10     # speculative decoding (requests one at a time)
thinktune deploy --run-dir runs/quickstart -o deploy/quickstart --gpus 1
thinktune deploy --run-dir runs/quickstart -o deploy/quickstart --set alerts.p99_latency_seconds=5
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from thinktune.cli.app import (
    ConfigOpt,
    OfflineOpt,
    RagIndexOpt,
    RagKOpt,
    SetOpt,
    app,
    build_config,
    console,
    user_errors,
    with_rag,
)
from thinktune.errors import UserError


@app.command()
@user_errors
def serve(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(help="Serve a training run: its config, and what it trained (named after the run)."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Base model: bundled name, HF directory or .gguf.")] = None,
    adapter: Annotated[
        list[str] | None, typer.Option(help="LoRA adapter to serve as NAME=PATH (repeat for several).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (serve.port).")] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="transformers (default), vllm (CUDA GPU + vllm), llamacpp (a GGUF on the CPU) or auto."),
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="Name clients use for the base model (default: model.name_or_path).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for torch or llama.cpp (default: all cores).")
    ] = None,
    draft_model: Annotated[
        str | None,
        typer.Option(
            help="Speculative decoding with this draft model (same tokenizer vocabulary; serve.draft_model). "
            "Requests then run one at a time."
        ),
    ] = None,
    prompt_lookup: Annotated[
        int | None,
        typer.Option(
            help="Speculative decoding by prompt lookup: draft up to N tokens (serve.prompt_lookup). Requests then "
            "run one at a time."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    rag_index: RagIndexOpt = None,
    rag_k: RagKOpt = None,
    offline: OfflineOpt = False,
) -> None:
    """Serve a model and its adapters over an OpenAI-compatible API (/v1/chat/completions, /v1/completions).

    Example: `thinktune serve --run-dir runs/quickstart`, then `curl localhost:8000/v1/chat/completions
    -H 'Content-Type: application/json' -d '{"model":"quickstart","messages":[{"role":"user","content":"hi"}]}'`

    Limits (batch size, queue, timeout, body size, max_tokens) and the API key are `serve.*` keys:
    `--set serve.max_queue=32`. See docs/serving.md.

    With retrieval: `thinktune serve --run-dir runs/contracts --rag-index runs/contracts-index` (a run trained with
    data.rag retrieves from its own index without the option); responses carry the passages used as `sources`.
    """
    from thinktune.serve.run_dir import parse_adapter_options, read_run_dir, with_adapters

    run = read_run_dir(run_dir) if run_dir else None
    sets = []
    if run and run.model:
        sets.append(f"model.name_or_path={run.model}")
    if run and (run.model or run.tensors):  # the trained model replaces the base, under the run's name
        served_model_name = served_model_name or run.name
    sets += [f"model.name_or_path={model}"] if model else []
    sets += [f"serve.host={host}"] if host else []
    sets += [f"serve.port={port}"] if port else []
    sets += [f"serve.backend={backend}"] if backend else []
    sets += [f"serve.draft_model={draft_model}"] if draft_model else []
    sets += [f"serve.prompt_lookup={prompt_lookup}"] if prompt_lookup is not None else []
    cfg = build_config(config or (run.config if run else None), sets + list(set_ or []))
    cfg = with_rag(cfg, rag_index, rag_k)
    gguf = None
    if cfg.serve.backend in ("llamacpp", "auto"):
        from thinktune.serve.llamacpp_backend import choose_backend, find_gguf

        gguf = find_gguf(cfg.model.name_or_path, cfg.model.gguf_file, run.dir if run else None)
        if cfg.serve.backend == "auto":
            chosen, why = (
                ("transformers", "speculative decoding runs on the transformers backend")
                if cfg.serve.speculative
                else choose_backend(gguf)
            )
            console.print(f"backend: {chosen} ({why})", highlight=False, soft_wrap=True)
            cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"backend": chosen})})
    if cfg.serve.backend == "llamacpp" and run:
        if gguf is None:
            raise UserError(
                f"--backend llamacpp serves a run's GGUF and {run.dir} has none: "
                f"thinktune export --run-dir {run.dir} --format gguf"
            )
        served_model_name = served_model_name or run.name  # the export has the run's training merged in
        run = None
    adapters = {run.name: str(run.adapter)} if run and run.adapter else {}
    cfg = with_adapters(cfg, adapters | parse_adapter_options(adapter or []))
    tensors = run.tensors if run else None

    from thinktune.serve.server import api_key

    if cfg.serve.backend == "vllm":
        if cfg.data.rag is not None:
            raise UserError(
                "--backend vllm serves vLLM's own API without retrieval: serve a rag index (--rag-index, data.rag) "
                "with the transformers backend"
            )
        if tensors is not None:
            raise UserError(
                f"--backend vllm serves model folders, and {run.dir} saved trained tensors of the base: export it "
                f"first (thinktune export --run-dir {run.dir} --format merged) and serve that folder with --model"
            )
        from thinktune.serve.vllm_backend import run_vllm

        run_vllm(cfg, served_model_name, api_key(cfg))
        return
    from thinktune.serve.server import serve as run_server

    names = ", ".join([served_model_name or cfg.model.name_or_path, *cfg.serve.adapters])
    line = f"loading {names} to serve on http://{cfg.serve.host}:{cfg.serve.port}/v1"
    if cfg.serve.speculative:
        how = f"draft model {cfg.serve.draft_model}" if cfg.serve.draft_model else "prompt lookup"
        line += f"; speculative decoding ({how}): requests run one at a time"
    console.print(line, highlight=False)
    run_server(cfg, served_model_name, log_level, threads, trained_tensors=tensors, gguf=gguf)


@app.command()
@user_errors
def deploy(
    run_dir: Annotated[Path, typer.Option(help="The training run to deploy.")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where to write the build context.")],
    image: Annotated[str, typer.Option(help="Image name the manifests use.")] = "thinktune-serve:latest",
    name: Annotated[str | None, typer.Option(help="Kubernetes name (default: the run's name).")] = None,
    gpus: Annotated[int, typer.Option(help="nvidia.com/gpu per pod (0 = CPU only).")] = 1,
    replicas: Annotated[int, typer.Option(help="Pods at least (also the autoscaler's minimum).")] = 1,
    max_replicas: Annotated[int, typer.Option(help="Autoscaler maximum.")] = 4,
    memory: Annotated[str, typer.Option(help="Memory request and limit per pod.")] = "16Gi",
    thinktune_requirement: Annotated[
        str | None, typer.Option(help="pip requirement for thinktune in the image, or a local wheel file.")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Write a Dockerfile, the serving config, the model files, Kubernetes manifests and alert rules for a run.

    Example: `thinktune deploy --run-dir runs/quickstart -o deploy/quickstart --gpus 0`, then
    `docker build -t thinktune-serve:latest deploy/quickstart && kubectl apply -f deploy/quickstart/k8s.yaml`

    `--set` overrides the run's config for the deployment: `--set serve.max_queue=32`, and the alert thresholds
    `--set alerts.p99_latency_seconds=5 --set alerts.memory_share=0.9` (see docs/serving.md).
    """
    from thinktune.serve.deploy import DeploySpec, write_deployment

    spec = DeploySpec(image=image, name=name, gpus=gpus, replicas=replicas, max_replicas=max_replicas, memory=memory)
    if thinktune_requirement:
        spec = DeploySpec(**{**spec.__dict__, "thinktune_requirement": thinktune_requirement})
    written = write_deployment(run_dir, output_dir, spec, set_)
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    if output_dir / "alerts.yaml" not in written:
        console.print("no alerts.yaml: the vllm backend exports vLLM's own metrics, which the alert rules do not read")
    console.print(f"next: docker build -t {image} {output_dir} && kubectl apply -f {output_dir / 'k8s.yaml'}")
