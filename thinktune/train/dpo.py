"""Preference tuning recipe: DPO, IPO, SimPO, ORPO and KTO on pairs {prompt, chosen, rejected}.

    thinktune dpo --data prefs.jsonl --loss dpo --beta 0.1
    thinktune dpo --config my.yaml --data prefs.jsonl --loss simpo --adapter runs/sft/adapter -o runs/simpo

The run skeleton is train/run.py; this recipe is its data (pairs rendered by the chat template, labels on the last
answer only, the parity check as in SFT; LLaMA-Factory's labelled KTO answers), its policy (method, or --adapter to
continue one; train/policy.py) with the reference (log-probs cached in one pass with the adapter disabled, or taken
live, `dpo.reference: live`) and its objective (objectives/preference.py: a mean per pair, per answer for KTO).
The settings are the `dpo:` section of the run config (`--set dpo.beta=0.2`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console

from thinktune.config import DPOConfig, RunConfig
from thinktune.data.cleaning import Cleaner
from thinktune.data.collate import pad_batch
from thinktune.data.dataset_info import reference
from thinktune.data.formats import RecordError
from thinktune.data.prepare import check_parity
from thinktune.data.reading import KTO, Reject, check_bad_fraction, check_source, is_kto, read_records
from thinktune.data.render import RenderOptions, TokenizedSample, tokenize_record
from thinktune.data.spec import DatasetSpec
from thinktune.errors import ConfigError, DataError
from thinktune.methods import count_parameters
from thinktune.progress import status
from thinktune.train.objectives.preference import REFERENCE_FREE, kl_rows, preference_objective
from thinktune.train.policy import ReferencePolicy, load_policy, reference_for
from thinktune.train.run import Run, balanced_weights, execute, optimizer_steps, prepare_training, train_loop

__all__ = ["DPOConfig", "Preference", "run_dpo"]


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


class Preference:
    """The `thinktune dpo` recipe: `data_files` (default data.train) of pairs, `adapter` to continue training."""

    name = "dpo"

    def __init__(self, data_files: list[str] | None = None, adapter: str | None = None) -> None:
        self.data_files, self.adapter = data_files, adapter
        self.files: list[str | DatasetSpec] = []
        self.data: PreferenceData | None = None

    def check(self, cfg: RunConfig) -> None:
        from thinktune.train.settings import check_settings

        check_settings(cfg, "dpo", self.data_files)  # SFT-only settings: one line before anything loads
        self.files = self.data_files or list(cfg.data.train)
        if self.data_files and cfg.data.dataset_dir:  # --data may name datasets of data.dataset_dir, as data.train may
            self.files = [reference(f, cfg.data.dataset_dir) for f in self.data_files]
        for ref in self.files:  # a missing file or a non-pair dataset fails before loading
            check_source(ref, preference_kind(ref, cfg.dpo.loss))
        if cfg.dpo.loss == "kto" and cfg.train.batch_size < 2:
            raise ConfigError("dpo.loss=kto needs train.batch_size >= 2")

    def prepare(self, run: Run) -> str:
        self.data = load_preferences(run, self.files, run.cfg.dpo.loss)
        run.rejects = self.data.rejects + run.rejects
        run.model = load_policy(run, self.adapter, optimizer_steps(run, len(self.data.records)))
        return f"{len(self.data.records)} preference pairs"

    def fit(self, run: Run, resume: str | None) -> dict[str, Any]:
        cfg, data = run.cfg.dpo, self.data
        needs_ref = cfg.loss not in REFERENCE_FREE
        reference = reference_for(run, self.adapter is not None) if needs_ref else None
        trainable, total = count_parameters(run.model)
        run.console.print(
            f"{cfg.loss}: {trainable:,} trainable of {total:,} parameters; reference: "
            f"{reference.kind if reference else 'none (reference-free loss)'}"
        )
        opt = prepare_training(run, len(data.records))
        if reference is not None:
            reference.to(run.accelerator.device)
        cached = None
        if needs_ref and cfg.reference == "cached":
            with status(run.console, "reference log-probs (one pass over the pairs)"):
                cached = cache_reference_logps(run, data, reference)
            if reference.kind == "copy":
                reference.release(run.model)  # cached: the frozen copy is no longer needed
        stats = train_loop(
            run,
            opt,
            len(data.records),
            lambda idx: pair_batch(data, idx, run.tokenizer.pad_token_id, cached),
            preference_objective(cfg, reference),
            balanced_weights(run.cfg, data.records),
            resume,
        )
        if reference is not None:
            reference.release(run.accelerator.unwrap_model(run.model))
        return stats

    def finish(self, run: Run) -> dict[str, Any]:
        return {
            "loss": run.cfg.dpo.loss,
            "beta": run.cfg.dpo.beta_value,
            "dpo": run.cfg.dpo.model_dump(mode="json"),
            "start_adapter": str(self.adapter) if self.adapter else None,
            "pairs": len(self.data.records),
            "rejected_records": len(self.data.rejects),
        }


def run_dpo(
    cfg: RunConfig,
    data_files: list[str] | None = None,
    adapter: str | None = None,
    console: Console | None = None,
    resume: str | None = None,
) -> dict[str, Any]:
    return execute(cfg, Preference(data_files, adapter), console, resume)
