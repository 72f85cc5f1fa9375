"""`thinktune eval`: evaluate any model (+ optional adapter) on a task file, writing JSON + markdown reports.

thinktune eval                                         # bundled SmolLM2 on the bundled test split
thinktune eval --adapter runs/quickstart/adapter --output-dir runs/quickstart/eval-again
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from thinktune.config import RunConfig
from thinktune.data.reading import check_bad_fraction
from thinktune.errors import ModelNotFoundError, UserError
from thinktune.eval.report import write_report
from thinktune.eval.runner import EvalResult, evaluate
from thinktune.eval.tasks import load_tasks
from thinktune.models import load_pretrained
from thinktune.train.engine.progress import task_progress


def load_adapter(model, adapter: str | Path):
    from peft import PeftModel

    path = Path(adapter)
    if not (path / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"{path}: not a PEFT adapter directory (no adapter_config.json)")
    return PeftModel.from_pretrained(model, path)


def run_eval_job(cfg: RunConfig, adapter: str | None, out_dir: Path, console: Console) -> EvalResult:
    if not cfg.data.test:
        raise UserError("no evaluation data: set data.test or pass --data FILE")
    loaded = load_tasks(cfg.data.test, cfg.data.format, cfg.eval.max_samples)
    check_bad_fraction(loaded, cfg.data.max_bad_fraction, cfg.data.test)
    with console.status(f"loading {cfg.model.name_or_path}"):
        model, tokenizer, _ = load_pretrained(cfg.model)
        if adapter:
            model = load_adapter(model, adapter)
    with task_progress(console, "eval") as bar:
        task = bar.add_task("eval", total=len(loaded.records))
        result = evaluate(
            model, tokenizer, loaded.records, cfg.eval, cfg.data.system_prompt, progress=lambda n: bar.advance(task, n)
        )
    title = f"{cfg.model.name_or_path}" + (f" + {adapter}" if adapter else "")
    write_report(result, out_dir, "report", title)
    return result
