"""Run a model over evaluation tasks: batched generation, answer checking, format compliance, held-out loss.

A task whose reference is a tool call (`task["tool_calls"]`, see tasks.py) is scored on its calls (eval/tool_calls.py):
`correct` means the calls equal the reference's, and the headline gains `tool_call_accuracy` and `tool_call_tasks`.
A task whose reference is a box `[x1, y1, x2, y2]` is scored by IoU (eval/boxes.py): `correct` means IoU ≥ 0.5, and the
headline gains `mean_iou` and `box_tasks`. A task with retrieved passages (`task["rag"]`, tasks.py) records them, its
gold ids and the ids its output cites as `[C07]`; the headline gains `retrieval_recall@k` (share of gold ids among
the k passages), `citation_coverage` (share of gold ids the output cites) and `rag_tasks`. A task with images
(`task["images"]`) needs a vision-language model's `vision` (models/vision.py): its prompt and reference loss are
rendered with the images' tokens."""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from thinktune.config import EvalConfig
from thinktune.data.collate import pad_batch
from thinktune.data.formats import RecordError
from thinktune.data.render import RenderOptions, inference_thinking, render_prompt, tokenize_conversation
from thinktune.data.tool_calls import calls_equal
from thinktune.errors import ConfigError
from thinktune.eval.boxes import IOU_CORRECT, box_iou, is_box, parse_box
from thinktune.eval.generate import GenerationStats, batched, generate_batch
from thinktune.eval.metrics import compute_metrics, perplexity_from_loss
from thinktune.eval.reasoning import (
    answers_match,
    format_report,
    maj_at_k_correct,
    parse_output,
    pass_at_k,
    words_answer,
)
from thinktune.eval.tool_calls import majority_calls_correct, score_tool_calls, tool_call_summary
from thinktune.rag.chunking import Chunk
from thinktune.rag.prompt import cited_ids
from thinktune.rag.scoring import citation_coverage, recall


@dataclass
class EvalResult:
    accuracy: float
    format_compliance: float
    mean_think_tokens: float
    mean_output_tokens: float
    loss: float | None
    perplexity: float | None
    n: int
    seconds: float
    samples: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, float | int] = field(default_factory=dict)

    def headline(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("samples")
        d.update(d.pop("extra"))
        return d


@torch.inference_mode()
def heldout_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[dict],
    system_prompt: str | None,
    bs: int,
    thinking: str = "auto",
    vision=None,
) -> float | None:
    """Mean cross-entropy on the reference answers' tokens (teacher forcing), rendered as training renders them.

    Samples of similar length share a batch (less padding), and where the model takes `logits_to_keep` the LM head
    runs only at the positions whose next token is scored in some row of the batch (the answers), not over the
    whole vocabulary at every prompt position: the same loss, less work."""
    samples, opts = [], RenderOptions(thinking=thinking)
    for t in tasks:
        try:
            samples.append(
                tokenize_conversation(
                    tokenizer, t["messages"], system_prompt, tools=t.get("tools"), opts=opts,
                    images=t.get("images"), vision=vision,
                )
            )  # fmt: skip
        except RecordError:
            continue
    samples.sort(key=lambda s: len(s.input_ids))
    scored_only = takes_logits_to_keep(model)
    total, count = 0.0, 0
    for chunk in batched(samples, bs):
        batch = pad_batch(chunk, tokenizer.pad_token_id)
        images = [p for s in chunk for p in s.images]
        if images:
            batch.update(vision.pixels(images))
        batch = {k: v.to(model.device) for k, v in batch.items()}
        target = batch["labels"][:, 1:]
        n = int((target != -100).sum())
        if scored_only:
            keep = (target != -100).any(dim=0).nonzero().squeeze(1)
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = model(**inputs, logits_to_keep=keep).logits.flatten(0, 1).float()
            total += float(torch.nn.functional.cross_entropy(logits, target[:, keep].flatten(), reduction="sum"))
        else:
            total += float(model(**batch).loss) * n
        count += n
    return total / count if count else None


def takes_logits_to_keep(model: torch.nn.Module) -> bool:
    """A causal LM whose forward takes `logits_to_keep` (positions to run the LM head on), not behind a PEFT prompt
    method (whose virtual tokens shift the positions)."""
    if hasattr(model, "get_base_model"):  # a PeftModel
        active = model.peft_config.get(getattr(model, "active_adapter", None) or "default")
        if getattr(active, "is_prompt_learning", False):
            return False
        model = model.get_base_model()
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def task_prompts(
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[dict],
    system_prompt: str | None,
    thinking: str = "auto",
    vision=None,
) -> list[str]:
    """The inference prompt of each task, with its tools and the thinking switch `data.thinking` gives it (and,
    for a task with images, the model's image text where each goes)."""
    return [
        render_prompt(
            tokenizer,
            vision.messages(t["prompt"]) if t.get("images") else t["prompt"],
            system_prompt,
            tools=t.get("tools"),
            enable_thinking=inference_thinking(thinking, t.get("meta", {}).get("enable_thinking")),
        )
        for t in tasks
    ]


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[dict],
    cfg: EvalConfig,
    system_prompt: str | None = None,
    progress=None,
    thinking: str = "auto",
    vision=None,
) -> EvalResult:
    """Generate for every task (k samples each when eval.num_samples > 1), check answers, format and extra metrics.
    `vision`: a vision-language model's way of taking images (models/vision.py), needed by tasks with images."""
    start = time.perf_counter()
    model.eval()
    k = cfg.num_samples
    schema = load_schema(cfg.json_schema)
    check_images_taken(tasks, vision)
    prompts = task_prompts(tokenizer, tasks, system_prompt, thinking, vision)
    images = [prompt_images(t) for t in tasks]
    # Similar lengths together: less padding per batch. Results are put back in task order.
    order = sorted(range(len(tasks)), key=lambda i: len(prompts[i]))
    jobs = [i for i in order for _ in range(k)]
    outputs: dict[int, list[tuple[str, int]]] = {i: [] for i in range(len(tasks))}
    stats = GenerationStats()
    for chunk in batched(jobs, cfg.batch_size):
        gen = generate_batch(
            model,
            tokenizer,
            [prompts[i] for i in chunk],
            cfg.max_new_tokens,
            cfg.do_sample or k > 1,
            cfg.temperature,
            stats,
            [images[i] for i in chunk],
            vision,
        )
        for i, out in zip(chunk, gen, strict=True):
            outputs[i].append(out)
        if progress is not None:
            progress(len(set(chunk)) if k > 1 else len(chunk))
    samples = [score_sample(t, outputs[i], tokenizer, schema) for i, t in enumerate(tasks)]
    loss = heldout_loss(model, tokenizer, tasks, system_prompt, cfg.batch_size, thinking, vision)
    n = max(1, len(samples))
    extra: dict[str, float | int] = {"generation_tokens_per_second": stats.tokens_per_second}
    extra.update(tool_call_summary(samples))
    extra.update(rag_summary(tasks, samples))
    ious = [s["iou"] for s in samples if "iou" in s]
    if ious:
        extra.update(mean_iou=sum(ious) / len(ious), box_tasks=len(ious))
    if k > 1:
        extra[f"pass@{k}"] = sum(s["pass_at_k"] for s in samples) / n
        extra[f"maj@{k}"] = sum(s["maj_correct"] for s in samples) / n
    if cfg.metrics:
        references = [reference_answer(t) for t in tasks]
        scores = compute_metrics(cfg.metrics, [s["answer_text"] for s in samples], references)
        for sc in scores.values():
            extra.update(sc.corpus)
    return EvalResult(
        accuracy=sum(s["correct"] for s in samples) / n,
        format_compliance=sum(s["format_ok"] for s in samples) / n,
        mean_think_tokens=sum(s["think_tokens"] for s in samples) / n,
        mean_output_tokens=sum(s["output_tokens"] for s in samples) / n,
        loss=loss,
        perplexity=perplexity_from_loss(loss),
        n=len(samples),
        seconds=time.perf_counter() - start,
        samples=samples,
        extra=extra,
    )


def score_sample(task: dict, outs: list[tuple[str, int]], tokenizer, schema: dict | None) -> dict[str, Any]:
    text, n_tokens = outs[0]
    parsed = parse_output(text)
    think_tokens = len(tokenizer(parsed.thinking, add_special_tokens=False)["input_ids"]) if parsed.thinking else 0
    checks = format_report(text, schema) if schema else None
    predicted = words_answer(parsed.answer, parsed.answer_text, task["answer"])
    sample = {
        "prompt": task["prompt"][-1]["content"],
        "output": text,
        "answer_text": parsed.answer_text,
        "predicted": predicted,
        "answer": task["answer"],
        "correct": answers_match(predicted, task["answer"]),
        "format_ok": parsed.format_ok and (checks is None or checks.get("json_valid", True)),
        "think_tokens": think_tokens,
        "output_tokens": n_tokens,
    }
    if is_box(task["answer"]):
        predicted = parse_box(parsed.answer_text)
        iou = box_iou(predicted, parse_box(task["answer"])) if predicted else 0.0
        sample.update(predicted=json.dumps(list(predicted)) if predicted else None, iou=iou, correct=iou >= IOU_CORRECT)
    reference = task.get("tool_calls")
    if reference:
        score = score_tool_calls(text, reference)
        sample.update(
            predicted=json.dumps(score.predicted, ensure_ascii=False) if score.predicted else None,
            predicted_calls=score.predicted,
            tool_call_errors=score.errors,
            correct=score.correct,
            tool_call_correct=score.correct,
            format_ok=score.well_formed,
        )
    if task.get("rag"):
        sample.update(rag_scores(task["rag"], text))
    if len(outs) > 1:
        if reference:
            predictions = [score_tool_calls(o, reference).predicted for o, _ in outs]
            c = sum(calls_equal(p, reference) for p in predictions)
            maj = majority_calls_correct(predictions, reference)
        else:
            answers = [
                words_answer(p.answer, p.answer_text, task["answer"]) for p in map(parse_output, [o for o, _ in outs])
            ]
            c = sum(answers_match(a, task["answer"]) for a in answers)
            maj = maj_at_k_correct(answers, task["answer"])
        sample.update(samples=[o for o, _ in outs], pass_at_k=pass_at_k(len(outs), c, len(outs)), maj_correct=maj)
    return sample


def rag_scores(rag: dict, output: str) -> dict[str, Any]:
    """A retrieval task's passages, gold ids and the ids the output (thinking included) cites; with gold ids, the
    share of them retrieved (recall@k) and cited (citation coverage)."""
    cited = cited_ids(output)
    out: dict[str, Any] = {"retrieved": rag["retrieved"], "gold_ids": rag["gold"], "cited": cited}
    if rag["gold"]:
        gold, retrieved = rag["gold"], [Chunk(i, i.split("#", 1)[0], "", 0, 0) for i in rag["retrieved"]]
        out.update(retrieval_recall=recall(gold, retrieved), citation_coverage=citation_coverage(gold, cited))
    return out


def rag_summary(tasks: list[dict], samples: list[dict]) -> dict[str, float | int]:
    """Headline retrieval figures over the tasks with gold ids: `retrieval_recall@k`, `citation_coverage`."""
    scored = [s for s in samples if "retrieval_recall" in s]
    if not scored:
        return {}
    k = next(t["rag"]["k"] for t in tasks if t.get("rag"))
    return {
        f"retrieval_recall@{k}": sum(s["retrieval_recall"] for s in scored) / len(scored),
        "citation_coverage": sum(s["citation_coverage"] for s in scored) / len(scored),
        "rag_tasks": len(scored),
    }


def prompt_images(task: dict) -> list[str]:
    """The images of a task's prompt: as many of its images as the prompt has placeholders."""
    from thinktune.data.images import IMAGE_TOKEN

    images = task.get("images") or []
    return images[: sum(m["content"].count(IMAGE_TOKEN) for m in task["prompt"])] if images else []


def check_images_taken(tasks: list[dict], vision) -> None:
    """Tasks with images need a model that takes them."""
    if vision is None and any(t.get("images") for t in tasks):
        n = sum(bool(t.get("images")) for t in tasks)
        raise ConfigError(
            f"{n} evaluation task(s) have images and the model takes text only: evaluate them with a "
            "vision-language model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL)"
        )


def reference_answer(task: dict) -> str | None:
    """The reference assistant message's answer part (thinking removed), for text metrics."""
    ref = task.get("messages", [])[-1:] or [None]
    msg = ref[0]
    if not msg or msg.get("role") != "assistant":
        return None
    return msg["content"]


def load_schema(path: str | None) -> dict | None:
    if not path:
        return None
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"eval.json_schema: {p} not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}:{e.lineno}: invalid JSON schema ({e.msg})") from None
