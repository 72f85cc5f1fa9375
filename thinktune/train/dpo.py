"""Preference tuning recipe: DPO, IPO, SimPO, ORPO and KTO on pairs {prompt, chosen, rejected}.

    thinktune dpo --data prefs.jsonl --loss dpo --beta 0.1
    thinktune dpo --config my.yaml --data prefs.jsonl --loss simpo --adapter runs/sft/adapter -o runs/simpo

setup → policy (method, or --adapter to continue one) → reference log-probs cached in one pass with the adapter
disabled (or taken live, `dpo.reference: live`) → eval before → TrainLoop with the preference loss → save → eval
after → summary.json. The losses are pure functions of summed completion log-probs (tested against TRL's).
Log-probs are sums over the completion tokens of the last assistant turn only (an earlier turn is prompt).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from rich.console import Console

from thinktune.config import RunConfig, Section
from thinktune.data.cleaning import Cleaner
from thinktune.data.collate import pad_batch
from thinktune.data.dataset_info import reference
from thinktune.data.formats import RecordError
from thinktune.data.prepare import check_parity
from thinktune.data.reading import KTO, Reject, check_bad_fraction, check_source, is_kto, read_records, write_rejects
from thinktune.data.render import RenderOptions, TokenizedSample, tokenize_record
from thinktune.data.spec import DatasetSpec
from thinktune.errors import ConfigError, DataError
from thinktune.methods import count_parameters
from thinktune.train.policy import (
    ReferencePolicy,
    adapter_starts_at_base,
    balanced_weights,
    load_policy,
    optimizer_steps,
    prepare_optimization,
    run_policy_loop,
    setup_run,
    token_logprobs,
)
from thinktune.train.settings import check_settings
from thinktune.train.sft import Run, paired_before_after, run_eval, save, write_summary

LossName = Literal["dpo", "ipo", "simpo", "orpo", "kto"]
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0, "orpo": 0.1, "kto": 0.1}
REFERENCE_FREE = {"simpo", "orpo"}


class DPOConfig(Section):
    loss: LossName = Field("dpo", description="Preference loss: dpo, ipo, simpo, orpo or kto.")
    beta: float | None = Field(
        None, gt=0, description="β (ORPO: λ); default per loss: dpo/ipo/orpo/kto 0.1, simpo 2.0."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="DPO: conservative DPO label noise ε.")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO: target reward margin γ.")
    desirable_weight: float = Field(1.0, gt=0, description="KTO: weight of the chosen (desirable) answers.")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO: weight of the rejected (undesirable) answers.")
    reference: Literal["cached", "live"] = Field(
        "cached", description="Reference log-probs: one pass before training (cached) or every step (live)."
    )

    @property
    def beta_value(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA[self.loss]


# ---- the losses: pure functions of per-sequence log-probs, one value per pair (or per answer for KTO) ----


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """−log σ(β·h), h = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)] (Rafailov et al. 2023, Eq. 7).

    label_smoothing ε > 0: conservative DPO, −(1−ε)·log σ(βh) − ε·log σ(−βh)."""
    h = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def ipo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """(h − 1/(2β))² (Azar et al. 2023, Eq. 17), h from per-token mean log-ratios so that β does not depend on the
    answer length (TRL's normalisation, confirmed with the IPO authors)."""
    h = (chosen_logps - ref_chosen_logps) / chosen_lengths.clamp(min=1) - (
        rejected_logps - ref_rejected_logps
    ) / rejected_lengths.clamp(min=1)
    return (h - 1 / (2 * beta)) ** 2


def simpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    gamma: float,
) -> torch.Tensor:
    """−log σ(β·log π(y_w)/|y_w| − β·log π(y_l)/|y_l| − γ) (Meng et al. 2024, Eq. 6); no reference model."""
    margin = chosen_logps / chosen_lengths.clamp(min=1) - rejected_logps / rejected_lengths.clamp(min=1)
    return -F.logsigmoid(beta * margin - gamma)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x < 0, stable on both sides of −ln 2 (Mächler 2012)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """NLL(y_w) − λ·log σ(log odds(y_w) − log odds(y_l)) (Hong et al. 2024, Eq. 6–7), odds(y) = P(y)/(1 − P(y))
    with P(y) = exp(mean token log-prob); the NLL is the chosen answer's mean token cross-entropy."""
    avg_c = chosen_logps / chosen_lengths.clamp(min=1)
    avg_r = rejected_logps / rejected_lengths.clamp(min=1)
    log_odds = (avg_c - avg_r) - (log1mexp(avg_c) - log1mexp(avg_r))
    return -avg_c - lam * F.logsigmoid(log_odds)


def kto_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024, Eq. 8) on log-ratios r = log π(y) − log π_ref(y), per answer:
    desirable w_D·(1 − σ(β(r − z₀))), undesirable w_U·(1 − σ(β(z₀ − r))); z₀ = max(0, kl), no gradient through z₀.
    Returns the desirable losses followed by the undesirable ones."""
    z0 = kl.detach().clamp(min=0)
    chosen = desirable_weight * (1 - torch.sigmoid(beta * (chosen_logratios - z0)))
    rejected = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - rejected_logratios)))
    return torch.cat([chosen, rejected])


@dataclass
class PairLogps:
    """Summed completion log-probs of a batch of pairs (policy, and reference when the loss has one)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_len: torch.Tensor
    rejected_len: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    kl: torch.Tensor | None = None  # KTO: z₀ estimate from mismatched (prompt, answer) pairs


LossFn = Callable[[PairLogps, DPOConfig], torch.Tensor]
PREFERENCE_LOSSES: dict[str, LossFn] = {
    "dpo": lambda p, c: dpo_loss(p.chosen, p.rejected, p.ref_chosen, p.ref_rejected, c.beta_value, c.label_smoothing),
    "ipo": lambda p, c: ipo_loss(
        p.chosen, p.rejected, p.ref_chosen, p.ref_rejected, p.chosen_len, p.rejected_len, c.beta_value
    ),
    "simpo": lambda p, c: simpo_loss(p.chosen, p.rejected, p.chosen_len, p.rejected_len, c.beta_value, c.simpo_gamma),
    "orpo": lambda p, c: orpo_loss(p.chosen, p.rejected, p.chosen_len, p.rejected_len, c.beta_value),
    "kto": lambda p, c: kto_loss(
        p.chosen - p.ref_chosen,
        p.rejected - p.ref_rejected,
        p.kl,
        c.beta_value,
        c.desirable_weight,
        c.undesirable_weight,
    ),
}


def implicit_rewards(p: PairLogps, cfg: DPOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """What each loss treats as the reward of an answer: β·log-ratio, or β·mean log-prob when reference-free."""
    b = cfg.beta_value
    if cfg.loss in REFERENCE_FREE:
        return b * p.chosen / p.chosen_len.clamp(min=1), b * p.rejected / p.rejected_len.clamp(min=1)
    return b * (p.chosen - p.ref_chosen), b * (p.rejected - p.ref_rejected)


# ---- data: preference records → token ids, labels on the last answer only ----


def tokenize_answer(
    tokenizer,
    prompt: list[dict],
    answer: dict,
    system_prompt: str | None,
    max_length: int | None,
    opts: RenderOptions | None = None,
    meta: dict | None = None,
) -> TokenizedSample:
    """prompt + answer rendered by the chat template; labels on the final assistant turn only. `opts` gives the
    thinking mode (data.thinking, with the record's `meta.enable_thinking`) and data.empty_think_in_loss."""
    base = opts or RenderOptions()
    opts = RenderOptions(system_prompt, base.thinking, "last", base.empty_think_in_loss, max_length)
    return tokenize_record(tokenizer, {"messages": [*prompt, answer], "meta": meta or {}}, opts)[-1]


@dataclass
class PreferenceData:
    records: list[dict]
    chosen: list[TokenizedSample]
    rejected: list[TokenizedSample]
    mismatched: list[TokenizedSample]  # KTO: prompt i with the chosen answer of pair i + 1 (for z₀)
    rejects: list[Reject]


def preference_kind(ref: str | DatasetSpec, loss: str) -> str:
    """What a dataset is read as: pairs, or, for KTO, LLaMA-Factory's labelled single answers when it holds those."""
    return KTO if loss == "kto" and is_kto(ref) else "preference"


def _name(ref: str | DatasetSpec) -> str:
    return ref if isinstance(ref, str) else ref.path


def load_preferences(run: Run, files: list[str | DatasetSpec], loss: str) -> PreferenceData:
    cfg = run.cfg.data
    opts = RenderOptions.from_config(cfg)
    cleaner = Cleaner(cfg.cleaning) if cfg.cleaning else None  # one cleaner: duplicates across files count too
    records, labelled, rejects = [], [], []
    for ref in files:
        kind = preference_kind(ref, loss)
        loaded = read_records(ref, cfg.format if cfg.format != "messages" else "auto", kind=kind)
        check_bad_fraction(loaded, cfg.max_bad_fraction, _name(ref))
        rejects += loaded.rejects
        for item in cleaner.stream(loaded.records) if cleaner else loaded.records:
            if isinstance(item, Reject):  # removed on purpose (duplicate, quality, ...): a reject, not a data error
                rejects.append(item)
            else:
                (labelled if kind == KTO else records).append(item)
    data = PreferenceData([], [], [], [], rejects)
    for rec in records:
        try:
            c = tokenize_answer(
                run.tokenizer, rec["prompt"], rec["chosen"], cfg.system_prompt, cfg.max_length, opts, rec["meta"]
            )
            r = tokenize_answer(
                run.tokenizer, rec["prompt"], rec["rejected"], cfg.system_prompt, cfg.max_length, opts, rec["meta"]
            )
        except RecordError as e:
            data.rejects.append(Reject(rec["meta"].get("source", "?"), rec["meta"].get("line", 0), str(e)))
            continue
        data.records.append(rec)
        data.chosen.append(c)
        data.rejected.append(r)
        if cfg.max_train_samples and len(data.records) >= cfg.max_train_samples:
            break
    if labelled:
        add_labelled_answers(run, data, labelled)
    # at most one reject per record (a pair stops at its first failing answer), as SFT counts them
    check_parity(data.rejects, len(records) + len(labelled), cfg.max_parity_mismatch)
    if not data.records:
        raise DataError(f"no usable preference pairs in {', '.join(map(_name, files))} (see rejects.jsonl)")
    if loss == "kto":
        if len(data.records) < 2:
            raise DataError("dpo.loss=kto needs at least two pairs (its KL term pairs each prompt with another answer)")
        n = len(data.records)
        for i, rec in enumerate(data.records):
            other = data.records[(i + 1) % n]["chosen"]
            try:
                sample = tokenize_answer(
                    run.tokenizer, rec["prompt"], other, cfg.system_prompt, None, opts, rec["meta"]
                )
            except RecordError:
                sample = data.chosen[i]  # the template refused the mix: fall back to the pair's own answer
            data.mismatched.append(sample)
    return data


def add_labelled_answers(run: Run, data: PreferenceData, labelled: list[dict]) -> None:
    """KTO scores every answer on its own (Ethayarajh et al. 2024, Eq. 8), so unpaired answers labelled desirable or
    not (LLaMA-Factory's KTO data) need no partner: each is tokenised with its own prompt, and they are zipped into
    rows (desirable, undesirable) that flow through the pair batches. The shorter side is cycled, so both kinds
    count equally per epoch; dpo.desirable_weight / undesirable_weight set their balance."""
    cfg = run.cfg.data
    opts = RenderOptions.from_config(cfg)
    sides: dict[bool, list[tuple[dict, TokenizedSample]]] = {True: [], False: []}
    for rec in labelled:
        msgs, meta = rec["messages"], rec["meta"]
        try:
            if msgs[-1]["role"] != "assistant":
                raise RecordError("a KTO answer must be the last turn (an assistant turn)")
            sample = tokenize_answer(run.tokenizer, msgs[:-1], msgs[-1], cfg.system_prompt, cfg.max_length, opts, meta)
        except RecordError as e:
            data.rejects.append(Reject(meta.get("source", "?"), meta.get("line", 0), str(e)))
            continue
        sides[meta["kto_label"]].append(({"prompt": msgs[:-1], "answer": msgs[-1], "meta": meta}, sample))
    good, bad = sides[True], sides[False]
    if not good or not bad:
        raise DataError(
            f"dpo.loss=kto on labelled answers needs both kinds: {len(good)} desirable, {len(bad)} undesirable "
            "usable (see rejects.jsonl)"
        )
    for i in range(max(len(good), len(bad))):
        if cfg.max_train_samples and len(data.records) >= cfg.max_train_samples:
            break
        (g, chosen), (b, rejected) = good[i % len(good)], bad[i % len(bad)]
        data.records.append({"prompt": g["prompt"], "chosen": g["answer"], "rejected": b["answer"], "meta": g["meta"]})
        data.chosen.append(chosen)
        data.rejected.append(rejected)


def pair_batch(data: PreferenceData, indices: list[int], pad_id: int, ref: dict[str, torch.Tensor] | None):
    """Rows [chosen…, rejected…] right-padded; KTO adds the mismatched rows under kl_*; cached ref log-probs."""
    batch = pad_batch([data.chosen[i] for i in indices] + [data.rejected[i] for i in indices], pad_id)
    if data.mismatched:
        kl = pad_batch([data.mismatched[i] for i in indices], pad_id)
        batch.update({f"kl_{k}": v for k, v in kl.items()})
    if ref is not None:
        idx = torch.tensor(indices)
        batch["ref_logps"] = torch.cat([ref["chosen"][idx], ref["rejected"][idx]])
        if "mismatched" in ref:
            batch["ref_kl_logps"] = ref["mismatched"][idx]
    return batch


def kl_rows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("kl_"): v for k, v in batch.items() if k.startswith("kl_")}


@torch.no_grad()
def cache_reference_logps(run: Run, data: PreferenceData, reference: ReferencePolicy) -> dict[str, torch.Tensor]:
    """One pass over the pairs with the reference policy: summed completion log-probs per answer."""
    model, bs, dev = run.model, run.cfg.train.batch_size, run.accelerator.device
    model.eval()
    out: dict[str, list[torch.Tensor]] = {"chosen": [], "rejected": [], "mismatched": []}
    for start in range(0, len(data.records), bs):
        idx = list(range(start, min(start + bs, len(data.records))))
        batch = {k: v.to(dev) for k, v in pair_batch(data, idx, run.tokenizer.pad_token_id, None).items()}
        c, r = reference.logprobs(model, batch).sum(-1).chunk(2)
        out["chosen"].append(c.cpu())
        out["rejected"].append(r.cpu())
        if data.mismatched:
            out["mismatched"].append(reference.logprobs(model, kl_rows(batch)).sum(-1).cpu())
    return {k: torch.cat(v) for k, v in out.items() if v}


def preference_loss_fn(cfg: DPOConfig, reference: ReferencePolicy | None):
    def loss_fn(model, batch):
        # Live reference passes first: switching adapters must not happen between the policy forward and backward.
        ref = ref_kl = None
        if cfg.loss not in REFERENCE_FREE:
            ref = batch["ref_logps"] if "ref_logps" in batch else reference.logprobs(model, batch).sum(-1)
        if cfg.loss == "kto":
            rows = kl_rows(batch)
            ref_kl = batch["ref_kl_logps"] if "ref_kl_logps" in batch else reference.logprobs(model, rows).sum(-1)
            with torch.no_grad():
                policy_kl = token_logprobs(model, rows).sum(-1)
        logps = token_logprobs(model, batch).sum(-1)
        lengths = (batch["labels"][:, 1:] != -100).sum(-1)
        p = PairLogps(*logps.chunk(2), *lengths.chunk(2))
        if ref is not None:
            p.ref_chosen, p.ref_rejected = ref.chunk(2)
        if ref_kl is not None:
            p.kl = (policy_kl - ref_kl).mean()
        loss = PREFERENCE_LOSSES[cfg.loss](p, cfg).mean()
        chosen_r, rejected_r = (r.detach() for r in implicit_rewards(p, cfg))
        parts = {
            "rewards/chosen": float(chosen_r.mean()),
            "rewards/rejected": float(rejected_r.mean()),
            "rewards/accuracy": float((chosen_r > rejected_r).float().mean()),
            "rewards/margin": float((chosen_r - rejected_r).mean()),
            "logps/chosen": float(p.chosen.detach().mean()),
            "logps/rejected": float(p.rejected.detach().mean()),
        }
        if p.kl is not None:
            parts["kl"] = float(p.kl)
        return loss, parts

    return loss_fn


def train(
    run: Run, data: PreferenceData, cfg: DPOConfig, adapter: str | None, resume: str | None = None
) -> dict[str, Any]:
    needs_ref = cfg.loss not in REFERENCE_FREE
    reference = (
        ReferencePolicy.of(run.model, adapter_starts_at_base(run.model, adapter is not None, run.cfg))
        if needs_ref
        else None
    )
    trainable, total = count_parameters(run.model)
    run.console.print(
        f"{cfg.loss}: {trainable:,} trainable of {total:,} parameters; reference: "
        f"{reference.kind if reference else 'none (reference-free loss)'}"
    )
    opt = prepare_optimization(run, len(data.records), reference)
    cached = None
    if needs_ref and cfg.reference == "cached":
        with run.console.status("reference log-probs (one pass over the pairs)"):
            cached = cache_reference_logps(run, data, reference)
        if reference.kind == "copy":
            reference.release(run.model)  # cached: the frozen copy is no longer needed
    return run_policy_loop(
        run,
        opt,
        len(data.records),
        lambda idx: pair_batch(data, idx, run.tokenizer.pad_token_id, cached),
        preference_loss_fn(cfg, reference),
        reference,
        sample_weights=balanced_weights(run.cfg.data, data.records),
        resume=resume,
    )


def run_dpo(
    cfg: RunConfig,
    dpo: DPOConfig,
    data_files: list[str] | None = None,
    adapter: str | None = None,
    console: Console | None = None,
    resume: str | None = None,
) -> dict[str, Any]:
    check_settings(cfg, "dpo", data_files)  # SFT-only settings: one line before anything loads
    console = console or Console()
    wall = time.perf_counter()
    files = data_files or list(cfg.data.train)
    if data_files and cfg.data.dataset_dir:  # --data may name datasets of data.dataset_dir, as data.train may
        files = [reference(f, cfg.data.dataset_dir) for f in data_files]
    for ref in files:
        check_source(ref, preference_kind(ref, dpo.loss))  # a missing file or a non-pair dataset fails before loading
    run, test_rejects = setup_run(cfg, console)
    data = load_preferences(run, files, dpo.loss)
    write_rejects(data.rejects + test_rejects, run.dir / "rejects.jsonl")
    console.print(
        f"data: {len(data.records)} preference pairs, {len(data.rejects) + len(test_rejects)} rejected "
        f"(→ rejects.jsonl)"
    )
    if dpo.loss == "kto" and cfg.train.batch_size < 2:
        raise ConfigError("dpo.loss=kto needs train.batch_size >= 2")
    run.model = load_policy(run, adapter, optimizer_steps(run, len(data.records)))
    before = run_eval(run, "before") if cfg.eval.before else None
    stats = train(run, data, dpo, adapter, resume)
    adapter_dir = save(run)
    after = run_eval(run, "after") if cfg.eval.after else None
    summary = {
        "run_dir": str(run.dir),
        "adapter_dir": str(adapter_dir),
        "model": cfg.model.name_or_path,
        "loss": dpo.loss,
        "beta": dpo.beta_value,
        "dpo": dpo.model_dump(mode="json"),
        "start_adapter": str(adapter) if adapter else None,
        "pairs": len(data.records),
        "rejected_records": len(data.rejects),
        "before": before.headline() if before else None,
        "after": after.headline() if after else None,
        "paired": paired_before_after(before, after),
        **stats,
        "wall_seconds": time.perf_counter() - wall,
    }
    write_summary(run, adapter_dir, summary)
    return summary
