"""`thinktune train`: evaluate → tune → evaluate."""

from __future__ import annotations

import os
import socket
from typing import Annotated

import typer
from rich.table import Table

from thinktune.cli.app import ConfigOpt, OfflineOpt, OutOpt, SetOpt, app, build_config, console, user_errors
from thinktune.errors import UserError
from thinktune.eval.significance import describe


@app.command()
@user_errors
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    output_dir: OutOpt = None,
    resume: Annotated[
        str | None, typer.Option(help="`auto` (latest checkpoint of the run) or a checkpoint directory.")
    ] = None,
    num_processes: Annotated[
        int,
        typer.Option(
            help="Processes on this machine (torchrun + Accelerate): replicas (DDP), or shards with "
            "train.distributed=fsdp."
        ),
    ] = 1,
    offline: OfflineOpt = False,
) -> None:
    """Evaluate, fine-tune and re-evaluate a model; everything lands in the run directory.

    Example: `thinktune train --config examples/quickstart.yaml --set train.learning_rate=5e-4 -o runs/try1`

    Resume after a crash: `thinktune train -c my.yaml --resume auto` (needs train.save_steps).
    Two processes: `thinktune train -c my.yaml --num-processes 2` (or `accelerate launch -m thinktune train ...`);
    sharded across them (FSDP2): add `--set train.distributed=fsdp`.
    """
    from thinktune.train.settings import check_settings

    cfg = build_config(config, set_, output_dir)  # config errors show before torch is imported
    check_settings(cfg, "sft")  # `dpo:`/`grpo:` settings: one line here, not one per process under torchrun
    if num_processes > 1:
        from thinktune.train.engine.sharding import check_fsdp

        check_fsdp(cfg.train, cfg.method.name, "sft")  # one line here, not one per process
        raise typer.Exit(launch_distributed(num_processes, config, set_, output_dir, resume))
    if num_processes < 1:
        raise UserError("--num-processes must be at least 1")
    from thinktune.train.sft import run_sft

    summary = run_sft(cfg, console, resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print_summary(summary)


def launch_distributed(n: int, config, sets, output_dir, resume) -> int:
    """Re-run this command under torchrun with n local processes; Accelerate picks up the process group. The launcher
    runs in this process, quiet: a failing process has printed its own one-line error, so the launcher's report of
    the failure (a traceback) is left out and only the exit code says it failed."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--nproc_per_node", str(n), "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "thinktune"]
    args += ["train", *(["--config", str(config)] if config else [])]
    for item in sets or []:
        args += ["--set", item]
    args += ["--output-dir", str(output_dir)] if output_dir else []
    args += ["--resume", resume] if resume else []
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the processes share the cores
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(args))
    except ChildFailedError:
        return 1
    return 0


def print_summary(s: dict) -> None:
    table = Table(title="thinktune run", show_lines=False)
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    b, a = s.get("before") or {}, s.get("after") or {}
    fmt = lambda d, k: f"{d[k]:.1%}" if k in d else "-"  # noqa: E731
    table.add_row("accuracy", fmt(b, "accuracy"), fmt(a, "accuracy"))
    table.add_row("format compliance", fmt(b, "format_compliance"), fmt(a, "format_compliance"))
    loss = lambda d: f"{d['loss']:.3f}" if d.get("loss") is not None else "-"  # noqa: E731
    table.add_row("held-out loss", loss(b), loss(a))
    console.print(table)
    if s.get("paired"):
        console.print(f"accuracy, before vs after on the same tasks: {describe(s['paired'])}")
    console.print(
        f"wall time {s['wall_seconds']:.0f}s · training {s['train_seconds']:.0f}s at "
        f"{s['train_tokens_per_second']:.0f} tokens/s · {s['steps']} steps"
        + (f" · {s['bad_steps']} skipped" if s.get("bad_steps") else "")
    )
    if s.get("stopped_early"):
        console.print(s["stopped_early"])
    console.print(
        f"run directory: [bold]{s['run_dir']}[/] (adapter: {s['adapter_dir']}, summary.json, "
        f"metrics.jsonl, plots/, eval/, rejects.jsonl)"
    )
