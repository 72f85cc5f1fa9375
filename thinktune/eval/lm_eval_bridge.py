"""Run EleutherAI lm-evaluation-harness tasks on an already-loaded model (optionally a PeftModel).

For users who have the tasks' datasets on this machine: thinktune never downloads, so set HF_DATASETS_OFFLINE=1 and
HF_HUB_OFFLINE=1 and point the task YAMLs at local files (see docs/lm-eval.md). `lm_eval` is an optional dependency,
imported only when the bridge is used.
"""

from __future__ import annotations

from pathlib import Path

from thinktune.errors import ConfigError, EnvironmentProblem

INSTALL_HINT = "lm-eval-harness bridge needs: pip install lm-eval"


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise EnvironmentProblem(INSTALL_HINT) from None
    return lm_eval, HFLM, TaskManager


def _task_manager(TaskManager, tasks: list[str], include_path: str | None):
    """Index only `include_path` when it defines every requested task (indexing lm-eval's ~15k built-ins takes ~6 s).

    Groups and tags may name built-in tasks, so only plain tasks qualify for the short cut.
    """
    if include_path is not None:
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if set(tasks) <= set(local.all_subtasks):
            return local
    return TaskManager(include_path=str(include_path) if include_path is not None else None)


def _check_tasks(tasks: list[str], known: set[str], include_path: str | None) -> None:
    if not tasks:
        raise ConfigError("no lm-eval tasks given")
    unknown = [t for t in tasks if t not in known and not (t.endswith((".yaml", ".yml")) and Path(t).is_file())]
    if unknown:
        where = f"lm-eval's built-in tasks or {include_path}" if include_path else "lm-eval's built-in tasks"
        raise ConfigError(f"unknown lm-eval task(s): {', '.join(unknown)} (not found in {where})")


def float_metrics(results: dict) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from lm-eval's results, numbers only, with the default ',none' filter suffix removed."""
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results.items():
        row = {}
        for key, value in metrics.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # alias, sample_len, "N/A" stderrs: every metric is "name,filter"
            name = key[: -len(",none")] if key.endswith(",none") else key
            row[name] = float(value)
        out[task] = row
    return out


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    include_path: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
) -> dict[str, dict[str, float]]:
    """Evaluate `model` on lm-eval `tasks` (names, or paths to task YAMLs); returns {task: {metric: value}}.

    `include_path` is a directory of extra task YAMLs (lm-eval's `--include_path`); `limit` caps documents per task.
    Metrics computed after a non-default filter keep their suffix (e.g. "exact_match,strip").
    """
    lm_eval, HFLM, TaskManager = _import_lm_eval()
    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"{include_path}: lm-eval include path is not a directory")
    manager = _task_manager(TaskManager, list(tasks), include_path)
    _check_tasks(list(tasks), set(manager.all_tasks), include_path)
    was_training = model.training
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)  # puts the model in eval mode
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=False,
        )
    finally:
        model.train(was_training)
    if out is None:  # non-zero rank under a distributed launcher: rank 0 reports
        return {}
    return float_metrics(out["results"])
