"""Run EleutherAI lm-evaluation-harness tasks on an already-loaded model (optionally a PeftModel).

For users who have the tasks' datasets on this machine: thinktune never downloads, so set HF_DATASETS_OFFLINE=1 and
HF_HUB_OFFLINE=1 and point the task YAMLs at local files (see docs/lm-eval.md). `lm_eval` is an optional dependency,
imported only when the bridge is used.

Prompts go through the model's chat template by default, as thinktune's own eval does: lm-eval's
`apply_chat_template` with `data.system_prompt` as its `system_instruction` and `data.thinking`'s switch as the
template's `enable_thinking`; generated text is scored on what follows `</think>` (lm-eval's `think_end_token`).
`chat=False` sends lm-eval's raw prompts (base models). The bundled task `thinktune_arithmetic` (the bundled arithmetic
test split) is always available.
"""

from __future__ import annotations

import json
from pathlib import Path

from thinktune.data.render import inference_thinking
from thinktune.errors import ConfigError, EnvironmentProblem

INSTALL_HINT = "lm-eval-harness bridge needs: pip install lm-eval"
BUNDLED_TASKS = Path(__file__).parent / "lm_eval_tasks"
THINK_END = "</think>"


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise EnvironmentProblem(INSTALL_HINT) from None
    return lm_eval, HFLM, TaskManager


def _task_manager(TaskManager, tasks: list[str], include_path: str | None):
    """Index only the bundled tasks and `include_path` when they define every requested task (indexing lm-eval's
    ~15k built-ins takes ~6 s).

    Groups and tags may name built-in tasks, so only plain tasks qualify for the short cut.
    """
    paths = [str(BUNDLED_TASKS)] + ([str(include_path)] if include_path is not None else [])
    local = TaskManager(include_path=paths, include_defaults=False)
    if set(tasks) <= set(local.all_subtasks):
        return local
    return TaskManager(include_path=paths)


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


def think_end_token(tokenizer) -> str | int:
    """`</think>` as lm-eval's think_end_token: its id when it is one vocabulary token (decoding may drop it as a
    special token before a string split could find it), else the text."""
    ids = tokenizer(THINK_END, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == THINK_END else THINK_END


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    include_path: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    chat: bool | None = None,
    system_prompt: str | None = None,
    thinking: str = "auto",
    samples_path: Path | None = None,
) -> dict[str, dict[str, float]]:
    """Evaluate `model` on lm-eval `tasks` (names, or paths to task YAMLs); returns {task: {metric: value}}.

    `include_path` is a directory of extra task YAMLs (lm-eval's `--include_path`); `limit` caps documents per task.
    Metrics computed after a non-default filter keep their suffix (e.g. "exact_match,strip").
    `chat`: render prompts with the tokenizer's chat template (None: when it has one), `system_prompt` as the system
    message and `thinking` (data.thinking) deciding `enable_thinking`. `samples_path`: write one JSON line per
    document (task, prompt as the model saw it, raw and filtered response, target, scores).
    """
    lm_eval, HFLM, TaskManager = _import_lm_eval()
    has_template = bool(getattr(tokenizer, "chat_template", None))
    chat = has_template if chat is None else chat
    if chat and not has_template:
        raise ConfigError("eval.lm_eval_chat=on but the tokenizer has no chat template; set model.chat_template")
    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"{include_path}: lm-eval include path is not a directory")
    manager = _task_manager(TaskManager, list(tasks), include_path)
    _check_tasks(list(tasks), set(manager.all_tasks), include_path)
    was_training = model.training
    try:
        enable_thinking = inference_thinking(thinking) if chat else None
        lm = HFLM(  # puts the model in eval mode
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=batch_size,
            think_end_token=think_end_token(tokenizer),
            # HFLM's own enable_thinking= refuses log-likelihood tasks; as a template argument it only renders
            chat_template_args={} if enable_thinking is None else {"enable_thinking": enable_thinking},
        )
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=samples_path is not None,
            apply_chat_template=chat,
            system_instruction=system_prompt,
        )
    finally:
        model.train(was_training)
    if out is None:  # non-zero rank under a distributed launcher: rank 0 reports
        return {}
    if samples_path is not None:
        write_samples(out.get("samples", {}), Path(samples_path))
    return float_metrics(out["results"])


def write_samples(samples: dict[str, list[dict]], path: Path) -> None:
    """lm-eval's logged samples as JSON lines: what the model was given and what it answered, per document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for task, rows in samples.items():
            for row in rows:
                line = {
                    "task": task,
                    "doc_id": row["doc_id"],
                    "prompt": row["arguments"][0][0],
                    "response": [r[0] if isinstance(r, list) else r for r in row["resps"]],
                    "filtered": row["filtered_resps"],
                    "filter": row["filter"],
                    "target": row["target"],
                    **{m: row[m] for m in row.get("metrics", []) if m in row},
                }
                f.write(json.dumps(line, default=str) + "\n")
