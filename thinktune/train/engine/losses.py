"""Training losses on causal-LM logits: cross-entropy (with label smoothing), logit distillation, repetition
unlikelihood and a contrastive margin, plus `combined_loss`, which applies whichever of them `TrainConfig` enables;
and the per-token log-probs the preference and GRPO objectives are built on (`token_logprobs`).

Every loss is a mean over *trained positions*: after the causal shift (logits at t predict the label at t + 1), the
positions whose label is not -100. Those positions are gathered first, so the extra work scales with trained tokens,
not with batch × length × vocabulary. Logits are upcast to float32 after the gather, as transformers does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from thinktune.config import TrainConfig
from thinktune.data.render import IGNORE
from thinktune.errors import ConfigError


@dataclass
class TrainedPositions:
    """Logits and targets at the trained positions of a batch, flattened in row-major order."""

    logits: torch.Tensor  # (N, V) float32
    targets: torch.Tensor  # (N,)
    rows: torch.Tensor  # (N,) batch row of each position, ascending
    mask: torch.Tensor  # (B, T - 1) which shifted positions are trained; gathers the teacher's logits alike


def trained_positions(logits: torch.Tensor, labels: torch.Tensor) -> TrainedPositions:
    labels = labels[:, 1:].to(logits.device)
    mask = labels != IGNORE
    return TrainedPositions(logits[:, :-1][mask].float(), labels[mask], mask.nonzero()[:, 0], mask)


def _zero(logits: torch.Tensor) -> torch.Tensor:
    # A batch without trained tokens contributes nothing, but stays in the graph (DDP expects every rank to backward).
    return logits.sum() * 0.0


def _cross_entropy(pos: TrainedPositions, label_smoothing: float) -> torch.Tensor:
    if not len(pos.targets):
        return _zero(pos.logits)
    return F.cross_entropy(pos.logits, pos.targets, label_smoothing=label_smoothing)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean next-token cross-entropy over trained positions; equals `model(**batch).loss` when smoothing is 0."""
    return _cross_entropy(trained_positions(logits, labels), label_smoothing)


def _check_vocab(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape[-1] != teacher.shape[-1]:
        raise ConfigError(
            f"train.teacher: the teacher's vocabulary ({teacher.shape[-1]} logits) differs from the student's "
            f"({student.shape[-1]}); logit distillation needs a teacher with the same tokenizer"
        )


def _distill_kl(student: TrainedPositions, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if not len(student.targets):
        return _zero(student.logits)
    # KL(p_teacher,T || p_student,T) · T², so gradients keep their scale across temperatures (Hinton et al. 2015, §2).
    log_q = F.log_softmax(student.logits / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach().to(log_q.device, torch.float32) / temperature, dim=-1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="sum") / len(student.targets)
    return kl * temperature**2


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """alpha · T²·KL(teacher_T ‖ student_T) + (1 − alpha) · CE, both over trained positions (Hinton et al. 2015).

    The teacher gets no gradient. Raises ConfigError when the two vocabularies differ.
    """
    _check_vocab(student_logits, teacher_logits)
    student = trained_positions(student_logits, labels)
    kl = _distill_kl(student, teacher_logits[:, :-1][student.mask.to(teacher_logits.device)], temperature)
    ce = _cross_entropy(student, label_smoothing)
    return alpha * kl + (1 - alpha) * ce, {"kl": kl.item(), "ce": ce.item()}


def _unlikelihood(pos: TrainedPositions) -> torch.Tensor:
    if not len(pos.targets):
        return _zero(pos.logits)
    log_probs = F.log_softmax(pos.logits, dim=-1)
    total = log_probs.new_zeros(())
    # Row by row: the candidate matrix is n × n per sequence instead of N × N over the batch.
    counts = torch.unique_consecutive(pos.rows, return_counts=True)[1].tolist()
    for lp, y in zip(log_probs.split(counts), pos.targets.split(counts), strict=True):
        n = len(y)
        earlier = torch.ones(n, n, dtype=torch.bool, device=y.device).tril(-1)  # [t, j]: j < t
        same = y[:, None] == y[None, :]
        first = ~(same & earlier).any(dim=1)  # j is the first occurrence of its token: each candidate counts once
        candidate = earlier & first[None, :] & ~same
        p = lp[:, y].exp()  # [t, j] = p_t(y_j)
        total = total - torch.log((1 - p).clamp_min(1e-5))[candidate].sum()
    return total / len(pos.targets)


def repetition_unlikelihood_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-level unlikelihood (Welleck et al. 2019, §4): at each trained position t, push down the probability of
    the earlier trained targets of the same sequence that differ from the target at t: −Σ_c log(1 − p_t(c)),
    averaged over trained positions. Prompt tokens are not candidates (answers may rightly repeat the question).
    """
    return _unlikelihood(trained_positions(logits, labels))


def _contrastive_margin(pos: TrainedPositions, margin: float) -> torch.Tensor:
    if not len(pos.targets):
        return _zero(pos.logits)
    target = pos.logits.gather(1, pos.targets[:, None])[:, 0]
    top2 = pos.logits.topk(2, dim=-1)
    # The best other token is the runner-up when the target is on top, the top token otherwise (no masked copy).
    best_other = torch.where(top2.indices[:, 0] == pos.targets, top2.values[:, 1], top2.values[:, 0])
    return F.relu(margin - (target - best_other)).mean()


def contrastive_margin_loss(logits: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Hinge on the logit gap: mean over trained positions of max(0, margin − (z_target − max_{v≠target} z_v))."""
    return _contrastive_margin(trained_positions(logits, labels), margin)


def combined_loss(
    logits: torch.Tensor,
    batch: dict[str, torch.Tensor],
    train_cfg: TrainConfig,
    teacher_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss `train_cfg` asks for, and its parts as floats for logging.

    CE (with train.label_smoothing); mixed with distillation when `teacher_logits` are given; plus
    unlikelihood_weight · unlikelihood and contrastive_weight · margin loss. EWC is added by the recipe, since it
    depends on the parameters, not the logits (see `ewc.EWCPenalty`).
    """
    if train_cfg.teacher and teacher_logits is None:
        raise ValueError("train.teacher is set: pass the teacher's logits for this batch")
    pos = trained_positions(logits, batch["labels"])
    ce = _cross_entropy(pos, train_cfg.label_smoothing)
    parts = {"ce": ce.item()}
    loss = ce
    if teacher_logits is not None:
        _check_vocab(logits, teacher_logits)
        teacher = teacher_logits[:, :-1][pos.mask.to(teacher_logits.device)]
        kl = _distill_kl(pos, teacher, train_cfg.distill_temperature)
        loss = train_cfg.distill_alpha * kl + (1 - train_cfg.distill_alpha) * ce
        parts["kl"] = kl.item()
    if train_cfg.unlikelihood_weight:
        ul = _unlikelihood(pos)
        loss = loss + train_cfg.unlikelihood_weight * ul
        parts["unlikelihood"] = ul.item()
    if train_cfg.contrastive_weight:
        cm = _contrastive_margin(pos, margin=1.0)
        loss = loss + train_cfg.contrastive_weight * cm
        parts["contrastive"] = cm.item()
    parts["loss"] = loss.item()
    return loss, parts


def gather_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log-softmax(logits / T) at the labelled next tokens: (B, T-1), aligned with labels[:, 1:], 0 where -100.

    Only the labelled positions are gathered before the softmax (memory ∝ completion tokens × vocabulary)."""
    pos = trained_positions(logits, labels)
    lp = torch.log_softmax(pos.logits / temperature, dim=-1).gather(1, pos.targets[:, None])[:, 0]
    out = torch.zeros(pos.mask.shape, dtype=lp.dtype, device=lp.device)
    return out.masked_scatter(pos.mask.to(lp.device), lp)


def token_logprobs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], temperature: float = 1.0, keep: int | None = None
) -> torch.Tensor:
    """Per-token log-probs of `batch["labels"]` (positions != -100) under `model`.

    `keep`: only the last `keep` tokens carry labels (left-padded prompt + completion); the LM head then runs on
    those positions alone (`logits_to_keep`) and the result is (B, keep)."""
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    if "position_ids" in batch:
        kwargs["position_ids"] = batch["position_ids"]
    labels = batch["labels"]
    if keep is not None:
        kwargs["logits_to_keep"] = keep + 1
        labels = labels[:, -(keep + 1) :]
    return gather_logprobs(model(**kwargs).logits, labels, temperature)
