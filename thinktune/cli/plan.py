"""`thinktune plan`: predict peak GPU memory of a training run, and settings that fit a device.

thinktune plan --model smollm2-135m-instruct --method lora --batch-size 8 --seq-len 512 --device 24GB
thinktune plan -c my.yaml --device 80GB --gpus 4
thinktune plan --model smollm2-135m-instruct --grpo-generations 8 --batch-size 4 --seq-len 192 --completion-length 64
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from thinktune.cli.app import ConfigOpt, OfflineOpt, SetOpt, app, build_config, console, user_errors
from thinktune.errors import UserError
from thinktune.progress import status


@app.command()
@user_errors
def plan(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    model: Annotated[
        str | None, typer.Option(help="Model: bundled name, HF directory or .gguf (default: config).")
    ] = None,
    method: Annotated[str | None, typer.Option(help="Tuning method (default: config's method.name).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Samples per device per micro-batch.")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Tokens per sample (default: data.max_length).")] = None,
    precision: Annotated[str, typer.Option(help="bf16 or fp32 weights and activations.")] = "bf16",
    gradient_checkpointing: Annotated[
        bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations.")
    ] = None,
    gpus: Annotated[int, typer.Option(help="Data-parallel devices (each holds a full copy).")] = 1,
    device: Annotated[str | None, typer.Option(help="Device memory to fit, e.g. 24GB; recommends settings.")] = None,
    grpo_generations: Annotated[
        int | None,
        typer.Option(help="Plan a GRPO run: G completions per prompt (--batch-size counts prompts)."),
    ] = None,
    completion_length: Annotated[
        int | None,
        typer.Option(help="GRPO: completion tokens (within --seq-len); the LM head runs on these only."),
    ] = None,
    image_tokens: Annotated[
        int,
        typer.Option(
            help="Vision-language models: image tokens per sample (within --seq-len); the vision encoder's "
            "activations when method.vision trains it."
        ),
    ] = 0,
    offline: OfflineOpt = False,
) -> None:
    """Predict peak memory per device — weights, gradients, optimizer state, activations — and, with --device,
    the largest batch / sequence that fits (gradient checkpointing on, QLoRA when nothing else fits).

    Example: `thinktune plan --model smollm2-135m-instruct --method full --batch-size 16 --seq-len 1024 --device 24GB`
    """
    from thinktune.models.memory import (
        PEFT_METHODS,
        GiB,
        TrainSetup,
        estimate,
        model_shape,
        parse_size,
        recommend,
        unsupported,
    )

    sets = (
        list(set_ or [])
        + ([f"model.name_or_path={model}"] if model else [])
        + ([f"method.name={method}"] if method else [])
    )
    cfg = build_config(config, sets)
    if precision not in ("bf16", "fp32"):
        raise UserError(f"--precision {precision}: choose bf16 or fp32")
    if gpus < 1:
        raise UserError("--gpus must be at least 1")
    if grpo_generations is not None and grpo_generations < 1:
        raise UserError("--grpo-generations must be at least 1")
    if completion_length is not None and grpo_generations is None:
        raise UserError("--completion-length needs --grpo-generations (it plans a GRPO run)")
    try:
        device_bytes = parse_size(device) if device else None
    except ValueError as e:
        raise UserError(f"--device: {e}") from None
    prompts = batch_size or cfg.train.batch_size
    seq = seq_len or cfg.data.max_length
    if completion_length is not None and not 0 < completion_length < seq:
        raise UserError(f"--completion-length {completion_length}: must be between 1 and --seq-len ({seq}) − 1")
    if not 0 <= image_tokens < seq:
        raise UserError(f"--image-tokens {image_tokens}: must be between 0 and --seq-len ({seq}) − 1")
    rl = grpo_generations is not None
    setup = TrainSetup(
        method=cfg.method,
        batch_size=prompts * (grpo_generations or 1),
        seq_len=seq,
        logits_len=(completion_length or seq) if rl else None,
        reference_copy=rl and cfg.method.name not in PEFT_METHODS,  # as ReferencePolicy: a copy unless PEFT
        precision=precision,
        gradient_checkpointing=cfg.train.gradient_checkpointing
        if gradient_checkpointing is None
        else gradient_checkpointing,
        gpus=gpus,
        image_tokens=image_tokens,
    )
    with status(console, f"reading {cfg.model.name_or_path}"):
        shape = model_shape(cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.revision)
    problem = unsupported(shape, cfg.method)
    if problem:
        raise UserError(f"{cfg.model.name_or_path}: {problem}")
    if image_tokens and not shape.vision_layers:
        raise UserError(f"--image-tokens: {cfg.model.name_or_path} is a text-only model")
    est = estimate(shape, setup)

    def row_of(s, e) -> list[str]:
        gc = "on" if s.gradient_checkpointing else "off"
        return [s.method.name, str(s.batch_size), str(s.seq_len), gc] + [f"{v / GiB:.2f}" for v in e.parts().values()]

    title = f"peak memory per device (GiB): {cfg.model.name_or_path}, {precision}, {gpus} GPU(s)"
    if rl:
        title += f"; GRPO: {prompts} prompts × G={grpo_generations} = batch {setup.batch_size}"
    table = Table(title=title)
    for col in ("method", "batch", "seq", "ckpt", "weights", "grads", "optim", "activ", "peak"):
        table.add_column(col, justify="right" if col != "method" else "left")
    table.add_row(*row_of(setup, est))
    rec = recommend(shape, setup, device_bytes) if device_bytes else None
    if rec and rec.setup != setup:
        table.add_row(*row_of(rec.setup, rec.estimate), style="green" if rec.fits else "red")
    console.print(table)
    console.print(
        "grads = gradients, optim = AdamW state, activ = activations kept for backward + logits; "
        "peak = weights + optim + max(activ, 2 × grads)",
        style="dim",
    )
    console.print(
        f"trainable {est.trainable:,} of {est.total_params:,} parameters ({est.trainable / est.total_params:.2%})"
        + (f"; the optimizer holds {est.updated:,}" if est.updated != est.trainable else "")
    )
    if shape.vision_layers:
        console.print(
            f"vision encoder: {shape.vision_layers} blocks, method.vision={cfg.method.vision}"
            + (
                f"; {image_tokens} image tokens per sample = {image_tokens * shape.merge**2} patches"
                if image_tokens
                else "; --image-tokens N adds what it keeps for backward when it trains"
            ),
            style="dim",
        )
    if rl:
        console.print(
            f"GRPO: LM head on the last {setup.logits_len} positions"
            + ("; weights include the frozen KL reference copy" if setup.reference_copy else "")
            + "; sampling (no gradients) needs less and is not counted",
            style="dim",
        )
    if rec:
        verdict = "[green]fits[/]" if rec.fits else "[red]does not fit[/]"
        console.print(f"{device}: {verdict} — {rec.note}", highlight=False)
