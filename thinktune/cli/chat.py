"""`thinktune chat`: interactive or one-shot chat.

thinktune chat --run-dir runs/quickstart -p "Ana has 3 bags of 4 apples. How many apples?"
thinktune chat --run-dir runs/contracts --rag-index runs/contracts-index     # passages per question, sources shown
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
from thinktune.progress import status


@app.command()
@user_errors
def chat(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    model: Annotated[str | None, typer.Option(help="Model: bundled name, HF directory or .gguf.")] = None,
    adapter: Annotated[
        Path | None, typer.Option(help="What a run trained: its adapter/ or model/ folder, or the run directory.")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="A training run: its config (model, system prompt) and what it trained.")
    ] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Ask once and exit.")] = None,
    image: Annotated[
        list[Path] | None,
        typer.Option(
            "--image",
            help="An image file for the first question (repeatable, in order; vision-language models only). The "
            "question's `<image>` placeholders mark where they go, else they go before its text; later questions "
            "still see them.",
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length limit.")] = 256,
    thinking: Annotated[
        bool | None,
        typer.Option("--thinking/--no-thinking", help="The template's thinking switch (default: data.thinking)."),
    ] = None,
    rag_index: RagIndexOpt = None,
    rag_k: RagKOpt = None,
    draft_model: Annotated[
        str | None,
        typer.Option(help="Speculative decoding with this draft model (same tokenizer vocabulary; serve.draft_model)."),
    ] = None,
    prompt_lookup: Annotated[
        int | None,
        typer.Option(help="Speculative decoding by prompt lookup: draft up to N tokens (serve.prompt_lookup)."),
    ] = None,
    offline: OfflineOpt = False,
) -> None:
    """Talk to a model: interactive, or one-shot with --prompt. Thinking is shown dimmed.

    Example: `thinktune chat --adapter runs/quickstart/adapter -p "Ana has 3 bags of 4 apples. How many apples?"`

    Speculative decoding: `--prompt-lookup 10`, or `--draft-model SMALL_MODEL` (same tokenizer); greedy answers stay
    the same.

    With an image (a vision-language model): `thinktune chat --model VL_MODEL_DIR --image cat.png -p "What animal?"`

    With retrieval: `thinktune chat --run-dir runs/contracts --rag-index runs/contracts-index -p "Notice period?"`
    prints the passages used after each answer.
    """
    from thinktune.data.images import check_images
    from thinktune.data.record_error import RecordError
    from thinktune.data.render import inference_thinking
    from thinktune.errors import ConfigError, DataError
    from thinktune.models import load_pretrained
    from thinktune.models.speculative import load_speculation
    from thinktune.models.vision import load_vision
    from thinktune.runs import load_trained, open_run
    from thinktune.serve.chat import ChatSession

    images: list[str] = []
    if image:
        try:
            images = check_images([str(p) for p in image], Path.cwd())
        except RecordError as e:
            raise DataError(f"--image: {e}") from None

    if run_dir is not None:
        run = open_run(run_dir)
        config, adapter = config or run.config, adapter or run.path
    sets = [f"model.name_or_path={model}"] if model else []
    sets += [f"serve.draft_model={draft_model}"] if draft_model else []
    sets += [f"serve.prompt_lookup={prompt_lookup}"] if prompt_lookup is not None else []
    cfg = build_config(config, (set_ or []) + sets)
    cfg = with_rag(cfg, rag_index, rag_k)
    retrieval = None
    if cfg.data.rag is not None:
        from thinktune.rag.retrieval import Retrieval

        retrieval = Retrieval.open(cfg.data.rag)  # before loading the model: a missing index is one line at once
    with status(console, f"loading {cfg.model.name_or_path}"):
        m, tok, source = load_pretrained(cfg.model)
        vision = load_vision(m, source.path)
        if vision is not None and cfg.serve.speculative:
            raise ConfigError(
                f"--draft-model / --prompt-lookup: {cfg.model.name_or_path} is a vision-language model, and "
                "speculative decoding here serves text-only models"
            )
        speculation = load_speculation(cfg.serve.draft_model, cfg.serve.prompt_lookup, cfg.model, m, tok)
        if adapter:
            m = load_trained(m, adapter)
    if images and vision is None:
        raise DataError(f"--image: {cfg.model.name_or_path} is a text-only model; images need a vision-language model")
    enable_thinking = thinking if thinking is not None else inference_thinking(cfg.data.thinking)
    session = ChatSession(
        m,
        tok,
        cfg.data.system_prompt,
        max_new_tokens,
        enable_thinking,
        vision=vision,
        retrieval=retrieval,
        speculation=speculation,
    )

    def answer(text: str) -> None:
        nonlocal images
        thinking, reply = session.ask(text, images)
        images = []  # they went with the first question
        if thinking:
            console.print(f"[dim]<think>\n{thinking}\n</think>[/]", highlight=False)
        console.print(reply, highlight=False)
        if session.sources:
            used = ", ".join(f"[{h.chunk.id}] ({h.score:.3f})" for h in session.sources)
            console.print(f"sources: {used}", highlight=False, markup=False, style="dim")

    if prompt is not None:
        answer(prompt)
        return
    console.print("chat with the model; empty line or Ctrl-D to quit")
    while True:
        try:
            text = console.input("[bold]> [/]")
        except EOFError:
            break
        if not text.strip():
            break
        answer(text)
