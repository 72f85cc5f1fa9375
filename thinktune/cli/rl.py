"""`thinktune dpo`, `thinktune grpo`, `thinktune distill traces`: preference tuning, RL with verifiable rewards,
and verified reasoning traces from a teacher.

    thinktune dpo --data prefs.jsonl --loss dpo --beta 0.1
    thinktune grpo --adapter runs/quickstart/adapter --set train.max_steps=30 -o runs/grpo
    thinktune distill traces --teacher http://localhost:8000/v1 --data tasks.jsonl --n 4 -o traces.jsonl

The recipe settings are sections of the run config (`dpo:`, `grpo:`) and take `--set grpo.beta=0`; options on the
command line win over both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError

from thinktune.cli.app import ConfigOpt, OfflineOpt, OutOpt, SetOpt, app, build_config, console, user_errors
from thinktune.errors import ConfigError
from thinktune.eval.significance import describe

distill_app = typer.Typer(no_args_is_help=True, help="Distillation data: verified reasoning traces from a teacher.")
app.add_typer(distill_app, name="distill")

DataOpt = Annotated[
    list[str] | None, typer.Option("--data", "-d", help="Training file(s) (repeat); default: data.train.")
]
ResumeOpt = Annotated[str | None, typer.Option(help="`auto` (latest checkpoint of the run) or a checkpoint directory.")]
AdapterOpt = Annotated[
    Path | None, typer.Option(help="Continue training this PEFT adapter (e.g. an SFT run's adapter/).")
]


def default_output(cfg, command: str):
    """Without -o or output_dir, an RL run goes to runs/<name>-<command> (never over the SFT run it starts from)."""
    if cfg.output_dir is None:
        return cfg.model_copy(update={"output_dir": str(Path("runs") / f"{cfg.name}-{command}")})
    return cfg


def option_sets(key: str, **values: Any) -> list[str]:
    """Command-line options as `--set key.field=value` overrides (YAML-quoted), skipping the ones not given."""
    out = []
    for field, value in values.items():
        if value is None or value == []:
            continue
        out.append(
            f"{key}.{field}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
        )
    return out


def print_rl_summary(s: dict) -> None:
    b, a = s.get("before") or {}, s.get("after") or {}
    pct = lambda d, k: f"{d[k]:.1%}" if k in d else "-"  # noqa: E731
    console.print(
        f"accuracy {pct(b, 'accuracy')} → {pct(a, 'accuracy')}, format {pct(b, 'format_compliance')} → "
        f"{pct(a, 'format_compliance')} · {s['steps']} steps in {s['train_seconds']:.0f}s · "
        f"wall {s['wall_seconds']:.0f}s"
    )
    if s.get("stopped_early"):
        console.print(s["stopped_early"])
    if s.get("paired"):
        console.print(f"held-out accuracy, before vs after on the same tasks: {describe(s['paired'])}")
    console.print(f"run directory: [bold]{s['run_dir']}[/] (adapter: {s['adapter_dir']}, summary.json, metrics.jsonl)")


@app.command()
@user_errors
def dpo(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    output_dir: OutOpt = None,
    data: DataOpt = None,
    loss: Annotated[str | None, typer.Option(help="dpo | ipo | simpo | orpo | kto (default: dpo.loss).")] = None,
    beta: Annotated[float | None, typer.Option(help="β (ORPO: λ); default per loss.")] = None,
    reference: Annotated[str | None, typer.Option(help="cached | live reference log-probs.")] = None,
    adapter: AdapterOpt = None,
    resume: ResumeOpt = None,
    offline: OfflineOpt = False,
) -> None:
    """Preference tuning on {prompt, chosen, rejected} pairs with DPO, IPO, SimPO, ORPO or KTO.

    Example: `thinktune dpo --data prefs.jsonl --loss dpo --beta 0.1 -o runs/dpo`

    Resume after a crash: the same command with `--resume auto` (needs train.save_steps).
    """
    sets = list(set_ or []) + option_sets("dpo", loss=loss, beta=beta, reference=reference)
    cfg = build_config(config, sets, output_dir)  # as `thinktune train` loads it
    from thinktune.train.dpo import run_dpo

    summary = run_dpo(default_output(cfg, "dpo"), data, str(adapter) if adapter else None, console, resume)
    print_rl_summary(summary)


@app.command()
@user_errors
def grpo(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    output_dir: OutOpt = None,
    data: DataOpt = None,
    adapter: AdapterOpt = None,
    reward: Annotated[
        list[str] | None,
        typer.Option(help="Reward (repeat): accuracy, format, arithmetic, length_penalty, or pkg.module:function."),
    ] = None,
    num_generations: Annotated[int | None, typer.Option("--num-generations", "-G", help="Samples per prompt.")] = None,
    beta: Annotated[float | None, typer.Option(help="KL coefficient (0 disables the reference).")] = None,
    loss_aggregation: Annotated[str | None, typer.Option(help="sequence_mean | token | dr_grpo.")] = None,
    dynamic_sampling: Annotated[
        bool | None,
        typer.Option(
            "--dynamic-sampling/--no-dynamic-sampling",
            help="DAPO: drop groups without reward variance and sample more prompts instead.",
        ),
    ] = None,
    process_reward: Annotated[
        str | None,
        typer.Option(help="Step reward for process supervision: arithmetic_steps or pkg.module:function."),
    ] = None,
    resume: ResumeOpt = None,
    offline: OfflineOpt = False,
) -> None:
    """GRPO with verifiable rewards: sample G answers per prompt, reward them, push up the better ones.

    Example: `thinktune grpo --adapter runs/quickstart/adapter --reward accuracy --reward format -o runs/grpo`

    Resume after a crash: the same command with `--resume auto` (needs train.save_steps).
    """
    sets = list(set_ or []) + option_sets(
        "grpo",
        rewards=reward,
        num_generations=num_generations,
        beta=beta,
        loss_aggregation=loss_aggregation,
        dynamic_sampling=dynamic_sampling,
        process_reward=process_reward,
    )
    cfg = build_config(config, sets, output_dir)  # as `thinktune train` loads it
    from thinktune.train.grpo import run_grpo

    summary = run_grpo(default_output(cfg, "grpo"), data, str(adapter) if adapter else None, console, resume)
    print_rl_summary(summary)
    console.print(f"reward curve: {summary['reward_plot']}")


@distill_app.command("traces")
@user_errors
def traces(
    teacher: Annotated[
        str, typer.Option(help="Teacher model (bundled name, HF dir, .gguf) or an OpenAI-compatible URL.")
    ],
    data: Annotated[str, typer.Option("--data", "-d", help="Tasks with known answers (JSON/JSONL).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the traces (JSONL).")],
    n: Annotated[int, typer.Option("--n", "-n", help="Tries per task.")] = 4,
    max_new_tokens: Annotated[int, typer.Option(help="Generation budget per trace.")] = 1024,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.7,
    batch_size: Annotated[int, typer.Option(help="Local teacher: sequences generated together.")] = 8,
    keep_all: Annotated[bool, typer.Option(help="Keep every verified trace, not only the first per task.")] = False,
    system_prompt: Annotated[str | None, typer.Option(help="System message for prompts without one.")] = None,
    endpoint_model: Annotated[str | None, typer.Option(help="Endpoint: model name to request.")] = None,
    allow_no_reasoning: Annotated[bool, typer.Option(help="Also keep correct answers without thinking.")] = False,
) -> None:
    """Write reasoning traces with a teacher; keep only those whose final answer is verified correct.

    Example: `thinktune distill traces --teacher http://localhost:8000/v1 --data tasks.jsonl --n 4 -o traces.jsonl`
    """
    from thinktune.train.distill import DistillConfig, distill_traces

    try:
        cfg = DistillConfig(
            teacher=teacher,
            n=n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            batch_size=batch_size,
            keep="all" if keep_all else "first",
            system_prompt=system_prompt,
            endpoint_model=endpoint_model,
            require_reasoning=not allow_no_reasoning,
        )
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    stats = distill_traces(cfg, data, output, console=console)
    failed = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(stats["failed_tries"].items())) or "none"
    console.print(
        f"kept {stats['kept']} traces for {stats['solved']}/{stats['tasks']} tasks ({stats['tries']} tries; "
        f"failed: {failed}) → {stats['output']}"
    )
