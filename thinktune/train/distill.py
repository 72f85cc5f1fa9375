"""Reasoning traces from a teacher, kept only when verified correct: the SFT data behind R1's distilled models
(DeepSeek-R1 §2.4: rejection sampling, keep the correct answers).

    thinktune distill traces --teacher path/to/teacher-model --data tasks.jsonl --n 4 -o traces.jsonl
    thinktune distill traces --teacher http://localhost:8000/v1 --endpoint-model deepseek-r1 --data tasks.jsonl \
        -o traces.jsonl                                    # any OpenAI-compatible server (vLLM, SGLang, an API)

For every task (prompt + known answer) the teacher writes up to n answers; an answer is kept when its final answer
(after the thinking) matches the reference (`answers_match`). The output is SFT data in the messages format, the
assistant turn carrying `reasoning_content` and `content`, ready for `thinktune train`. Tasks without a verified trace
go to `<output>.rejects.jsonl` with the reason.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from rich.console import Console

from thinktune.config import DataConfig, ModelConfig, Section
from thinktune.data.reading import Reject, check_bad_fraction, read_records, write_rejects
from thinktune.data.records import to_row
from thinktune.data.render import render_prompt
from thinktune.errors import DataError, EnvironmentProblem
from thinktune.eval.reasoning import answers_match, extract_answer, split_thinking
from thinktune.progress import status


class DistillConfig(Section):
    teacher: str = Field(..., description="Teacher: a model thinktune can load, or an OpenAI-compatible base URL.")
    n: int = Field(4, gt=0, description="Tries per task.")
    keep: Literal["first", "all"] = Field("first", description="Keep the first verified trace per task, or all.")
    max_new_tokens: int = Field(1024, gt=0, description="Generation budget per trace.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature.")
    batch_size: int = Field(8, gt=0, description="Local teacher: sequences generated together.")
    system_prompt: str | None = Field(None, description="System message added to prompts that have none.")
    require_reasoning: bool = Field(True, description="Reject answers without a closed thinking block.")
    endpoint_model: str | None = Field(None, description="Endpoint: the model name to request (default: first).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Endpoint: environment variable holding the API key.")
    concurrency: int = Field(4, gt=0, description="Endpoint: requests in flight.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Local teacher dtype.")


@dataclass(frozen=True)
class TeacherAnswer:
    reasoning: str | None
    content: str
    finished: bool = True  # False: the thinking never closed (cut off by the budget)


def from_text(text: str) -> TeacherAnswer:
    """A raw completion with inline <think>…</think> (templates that pre-fill <think> included)."""
    thinking, answer, closed = split_thinking(text)
    if thinking is not None and not closed:
        return TeacherAnswer(thinking, "", finished=False)
    return TeacherAnswer(thinking or None, answer)


# A teacher answers a batch of prompts (message lists) with n answers each.
Teacher = Callable[[list[list[dict[str, Any]]], int], list[list[TeacherAnswer]]]


class LocalTeacher:
    """Any model thinktune can load, sampling on this machine (batched, left-padded)."""

    def __init__(self, cfg: DistillConfig):
        from thinktune.models import load_pretrained

        self.cfg = cfg
        self.model, self.tokenizer, _ = load_pretrained(ModelConfig(name_or_path=cfg.teacher, dtype=cfg.dtype))
        self.model.eval()

    def __call__(self, prompts: list[list[dict[str, Any]]], n: int) -> list[list[TeacherAnswer]]:
        from thinktune.eval.generate import batched, generate_batch

        texts = [render_prompt(self.tokenizer, p, self.cfg.system_prompt) for p in prompts]
        jobs = [i for i in range(len(texts)) for _ in range(n)]
        out: list[list[TeacherAnswer]] = [[] for _ in texts]
        for chunk in batched(jobs, self.cfg.batch_size):
            gen = generate_batch(
                self.model,
                self.tokenizer,
                [texts[i] for i in chunk],
                self.cfg.max_new_tokens,
                True,
                self.cfg.temperature,
            )
            for i, (text, _) in zip(chunk, gen, strict=True):
                out[i].append(from_text(text))
        return out


class EndpointTeacher:
    """An OpenAI-compatible chat endpoint (`openai` client with base_url). Reads the server's separate reasoning
    field (`reasoning_content`, or `reasoning` in newer vLLM) and falls back to inline <think> tags."""

    def __init__(self, cfg: DistillConfig):
        try:
            from openai import OpenAI
        except ImportError:
            raise EnvironmentProblem("a teacher URL needs the openai client: pip install openai") from None
        self.cfg = cfg
        self.client = OpenAI(base_url=cfg.teacher, api_key=os.environ.get(cfg.api_key_env) or "EMPTY")
        self.model = cfg.endpoint_model or self.client.models.list().data[0].id

    def _messages(self, prompt: list[dict[str, Any]]) -> list[dict[str, str]]:
        msgs = [{"role": m["role"], "content": m["content"]} for m in prompt]
        if self.cfg.system_prompt and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        return msgs

    def _ask(self, prompt: list[dict[str, Any]], n: int) -> list[TeacherAnswer]:
        answers: list[TeacherAnswer] = []
        while len(answers) < n:  # servers that ignore `n` answer once per request
            resp = self.client.chat.completions.create(
                model=self.model,
                messages=self._messages(prompt),
                n=n - len(answers),
                temperature=self.cfg.temperature,
                max_tokens=self.cfg.max_new_tokens,
            )
            for choice in resp.choices:
                msg = choice.message
                reasoning = getattr(msg, "reasoning_content", None) or getattr(msg, "reasoning", None)
                if reasoning:
                    answers.append(TeacherAnswer(reasoning.strip(), (msg.content or "").strip()))
                else:
                    answers.append(from_text(msg.content or ""))
            if not resp.choices:
                break
        return answers[:n]

    def __call__(self, prompts: list[list[dict[str, Any]]], n: int) -> list[list[TeacherAnswer]]:
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            return list(pool.map(lambda p: self._ask(p, n), prompts))


def make_teacher(cfg: DistillConfig) -> Teacher:
    if cfg.teacher.startswith(("http://", "https://")):
        return EndpointTeacher(cfg)
    return LocalTeacher(cfg)


def verify(answer: TeacherAnswer, reference: str, require_reasoning: bool) -> str | None:
    """None when the answer is a usable verified trace, else why not (a short reason)."""
    if not answer.finished:
        return "unfinished"
    if require_reasoning and not answer.reasoning:
        return "no_reasoning"
    predicted = extract_answer(answer.content)
    if predicted is None:
        return "no_answer"
    return None if answers_match(predicted, reference) else "wrong"


def trace_row(task: dict[str, Any], answer: TeacherAnswer, teacher: str, attempt: int) -> dict[str, Any]:
    """The kept trace as a messages-format row (assistant reasoning_content + content)."""
    record = {
        "messages": [*task["prompt"], {"role": "assistant", "content": answer.content, "reasoning": answer.reasoning}],
        "meta": {**task["meta"], "answer": task["answer"], "teacher": teacher, "attempt": attempt},
    }
    return to_row(record)


def distill_traces(
    cfg: DistillConfig,
    data: str,
    output: Path,
    teacher: Teacher | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Write verified traces to `output` (JSONL); returns counts: tasks, kept, tries and why tries failed."""
    console = console or Console()
    loaded = read_records(data, "auto", kind="task")
    check_bad_fraction(loaded, DataConfig().max_bad_fraction, data)
    if not loaded.records:
        raise DataError(f"{data}: no prompts with known answers (see the rejects)")
    teacher = teacher or make_teacher(cfg)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    reasons: Counter[str] = Counter()
    rejects: list[Reject] = list(loaded.rejects)
    kept = tries = solved = 0
    chunk = max(cfg.batch_size, cfg.concurrency)
    with open(output, "w", encoding="utf-8") as f, status(console, "teacher writing traces") as spinner:
        for start in range(0, len(loaded.records), chunk):
            tasks = loaded.records[start : start + chunk]
            answers = teacher([t["prompt"] for t in tasks], cfg.n)
            for task, outs in zip(tasks, answers, strict=True):
                task_reasons: Counter[str] = Counter()
                good = 0
                for attempt, ans in enumerate(outs, 1):
                    tries += 1
                    why = verify(ans, task["answer"], cfg.require_reasoning)
                    if why is not None:
                        task_reasons[why] += 1
                        continue
                    good += 1
                    f.write(json.dumps(trace_row(task, ans, cfg.teacher, attempt), ensure_ascii=False) + "\n")
                    kept += 1
                    if cfg.keep == "first":
                        break
                reasons.update(task_reasons)
                solved += good > 0
                if not good:
                    detail = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(task_reasons.items()))
                    rejects.append(
                        Reject(
                            task["meta"].get("source", data),
                            task["meta"].get("line", 0),
                            f"no verified trace in {len(outs)} tries ({detail or 'no answers'})",
                        )
                    )
            spinner.update(f"teacher writing traces: {start + len(tasks)}/{len(loaded.records)} tasks, {kept} kept")
    write_rejects(rejects, output.with_suffix(".rejects.jsonl"))
    stats = {
        "tasks": len(loaded.records),
        "solved": solved,
        "kept": kept,
        "tries": tries,
        "failed_tries": dict(reasons),
        "unreadable_records": len(loaded.rejects),
        "output": str(output),
    }
    output.with_suffix(".summary.json").write_text(json.dumps(stats, indent=2))
    return stats
