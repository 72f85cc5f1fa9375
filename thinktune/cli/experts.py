"""`thinktune experts profile`: how a mixture-of-experts model routes a dataset (ESFT's expert usage).

thinktune experts profile --model path/to/qwen3-moe --data my_train.jsonl -o runs/experts
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from thinktune.cli.app import OutOpt, app, console, user_errors
from thinktune.errors import UserError
from thinktune.progress import status

experts_app = typer.Typer(no_args_is_help=True, help="Inspect mixture-of-experts routing.")
app.add_typer(experts_app, name="experts")


@experts_app.command("profile")
@user_errors
def experts_profile(
    model: Annotated[str, typer.Option(help="MoE model: HF directory or .gguf.")],
    data: Annotated[str, typer.Option(help="Samples (JSON/JSONL or bundled:NAME).")] = "bundled:arithmetic/train",
    output_dir: OutOpt = None,
    samples: Annotated[int, typer.Option(help="Samples to run through the model.")] = 64,
    score: Annotated[str, typer.Option(help="gate (gate-score share) or token (token-selection ratio).")] = "gate",
    max_length: Annotated[int, typer.Option(help="Token limit per sample.")] = 1024,
) -> None:
    """Per MoE layer: the most used experts and how many reach 20/50/80% of the routing; writes a heatmap PNG
    (layers × experts) and the numbers as JSON.

    Example: `thinktune experts profile --model ./qwen3-30b-a3b --data train.jsonl -o runs/experts`
    """
    import json

    from thinktune.config import DataConfig, ModelConfig
    from thinktune.data.prepare import prepare_training_data
    from thinktune.methods.expert_usage import expert_usage, plot_expert_usage, select_experts
    from thinktune.models import load_pretrained
    from thinktune.models.registry import arch_facts

    if score not in ("gate", "token"):
        raise UserError(f"--score {score}: choose gate or token")
    out = Path(output_dir or "runs/experts")
    with status(console, f"loading {model}"):
        m, tok, _ = load_pretrained(ModelConfig(name_or_path=model))
    facts = arch_facts(m.config.model_type)
    if facts is None or not facts.moe:
        raise UserError(f"{model}: '{m.config.model_type}' is not a mixture-of-experts model thinktune knows")
    prepared = prepare_training_data(DataConfig(train=[data], test=None, max_length=max_length), tok)
    with status(console, f"routing {min(samples, len(prepared.samples))} samples"):
        usage = expert_usage(m, prepared.samples, facts, max_samples=samples)
    share = usage.share(score)
    table = Table(title=f"expert usage ({'gate-score share' if score == 'gate' else 'token-selection ratio'})")
    for col in ("layer", "top experts (share)", "experts for 20%", "50%", "80%"):
        table.add_column(col, justify="left" if col.startswith("top") else "right")
    counts = {p: [len(x) for x in select_experts(share, p)] for p in (0.2, 0.5, 0.8)}
    for row, (layer, values) in enumerate(zip(usage.layers, share, strict=True)):
        top = values.argsort(descending=True)[:4].tolist()
        table.add_row(
            str(layer),
            ", ".join(f"{e} ({values[e]:.1%})" for e in top),
            *(str(counts[p][row]) for p in (0.2, 0.5, 0.8)),
        )
    console.print(table)
    png = plot_expert_usage(usage, out / "expert_usage.png", score)
    (out / "expert_usage.json").write_text(json.dumps(usage.to_json(), indent=2))
    console.print(f"{usage.samples} samples, {usage.tokens} tokens → {png}, {out / 'expert_usage.json'}")
