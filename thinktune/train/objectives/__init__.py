"""What a recipe trains: its objective, as pure loss modules the shared TrainLoop runs.

An `Objective` is `loss(model, batch) -> (loss, parts)`, a mean over the batch's units, and `units(batch)`, the count
that mean is over: trained tokens (SFT), pairs or answers (the preference family), completions or completion tokens
(GRPO, by its aggregation). The loop weights every micro-batch and process by its units, so a global batch trains
alike however it is split (engine/loop.py `_accumulate`). `parameter_penalty` is what every recipe adds on the
parameters, once per optimizer step: the method's own term (AdaLoRA's orthogonality penalty) and EWC.

    objectives/sft.py          cross-entropy (label smoothing, distillation, unlikelihood, contrastive), fast paths
    objectives/preference.py   DPO, IPO, SimPO, ORPO, KTO on summed completion log-probs
    objectives/grpo.py         group advantages, clipped surrogate, k3 KL, the three aggregations
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from thinktune.config import RunConfig
from thinktune.methods import method_loss, method_of
from thinktune.train.engine.ewc import EWCPenalty, load_fisher
from thinktune.train.engine.loop import Batch, LossFn, Penalty, UnitsFn, trained_tokens


@dataclass
class Objective:
    loss: LossFn
    units: UnitsFn = trained_tokens
    unit: str = "token"  # what one unit is, for the reader: token, pair, answer, completion


def parameter_penalty(cfg: RunConfig, unwrap: Callable[[torch.nn.Module], torch.nn.Module]) -> Penalty | None:
    """The method's term and EWC (train.ewc_lambda with train.ewc_fisher) on the parameters, or None."""
    ewc = None
    if cfg.train.ewc_lambda and cfg.train.ewc_fisher:
        ewc = EWCPenalty(*load_fisher(cfg.train.ewc_fisher), cfg.train.ewc_lambda)
    if ewc is None and method_of(cfg.method).loss is None:
        return None

    def penalty(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        plain = unwrap(model)
        total, parts = None, {}
        extra = method_loss(plain, cfg.method)
        if extra is not None:
            total, parts["method"] = extra, float(extra.detach())
        if ewc is not None:
            term = ewc(plain)
            total = term if total is None else total + term
            parts["ewc"] = float(term.detach())
        return (total if total is not None else torch.zeros(())), parts

    return penalty


def batch_rows(batch: Batch) -> int:
    """Units of a per-sequence mean: the batch's rows."""
    return int(batch["labels"].shape[0])
