"""Supervised fine-tuning recipe: evaluate → tune → evaluate, writing everything to the run directory.

    thinktune train                                   # quickstart: bundled SmolLM2 on the bundled arithmetic task
    thinktune train --config examples/qwen3-8b-lora.yaml --set train.learning_rate=1e-4
    accelerate launch -m thinktune train --config my.yaml   # several processes / GPUs

The run skeleton is train/run.py; this recipe is its data (chat-template rendering with the parity check,
data/prepare.py; with data.augment, each epoch's augmented samples, back-translations made before training by
train/translator.py), its trainable model (the method applied after the evaluation before, so virtual-token methods
do not change the baseline) and its objective (objectives/sft.py: a token mean, with the speed levers).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from rich.console import Console

from thinktune.config import RunConfig
from thinktune.data.collate import pad_batch
from thinktune.data.prepare import TrainingData, epoch_samples, prepare_training_data
from thinktune.data.spec import DataOptions
from thinktune.methods import MethodContext, apply_method, count_parameters, optimizer_parameters
from thinktune.models import load_pretrained
from thinktune.train.engine.ewc import compute_fisher, save_fisher
from thinktune.train.engine.sampler import batches_per_epoch
from thinktune.train.engine.speed import apply_liger_kernels, build_make_batch
from thinktune.train.objectives.sft import resolve_levers, sft_objective
from thinktune.train.run import Run, balanced_weights, execute, optimizer_steps, prepare_training, train_loop
from thinktune.train.translator import run_translations


class SFT:
    name = "sft"

    def __init__(self) -> None:
        self.data: TrainingData | None = None
        self.translations: dict[str, str | None] | None = None  # data.augment back_translation: prompt → paraphrase
        self.augmented: dict[int, dict[str, int]] = {}  # epoch → augmented samples per augmenter

    def check(self, cfg: RunConfig) -> None:
        from thinktune.train.settings import check_settings

        check_settings(cfg, "sft")

    def prepare(self, run: Run) -> str:
        self.data = prepare_training_data(run.cfg.data, run.tokenizer, vision=run.vision)
        run.rejects = list(self.data.rejects) + run.rejects
        opts = DataOptions.from_config(run.cfg.data)
        if opts.augment and opts.augment.active():
            epochs = planned_epochs(run, len(self.data.samples))
            with run.accelerator.main_process_first():  # the main process asks the teacher, the others read its cache
                self.translations = run_translations(self.data, opts, epochs, run.console)
        return f"{len(self.data.samples)} training samples from {self.data.total_records} records"

    def epoch_make_batch(self, run: Run, cfg: Any) -> Callable[[int], Callable[[list[int]], dict]] | None:
        """make_batch over epoch e's samples (data.augment), or None when every epoch trains the same samples."""
        opts = DataOptions.from_config(run.cfg.data)
        if not (opts.augment and opts.augment.active()):
            return None
        last: dict[int, Callable[[list[int]], dict]] = {}  # a rollback re-enters the same epoch

        def make(epoch: int) -> Callable[[list[int]], dict]:
            if epoch not in last:
                samples = epoch_samples(
                    self.data, run.tokenizer, run.cfg.data, epoch, opts, self.translations, run.vision
                )
                counts = dict(samples.counts()) if hasattr(samples, "counts") else {}  # data.EpochSamples
                self.augmented[epoch] = counts
                detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
                run.console.print(
                    f"epoch {epoch}: {len(getattr(samples, 'augmented', {}))} of {len(samples)} samples augmented "
                    f"({detail})",
                    highlight=False,
                )
                last.clear()
                last[epoch] = build_make_batch(samples, cfg, run.tokenizer.pad_token_id, run.vision)
            return last[epoch]

        return make

    def fit(self, run: Run, resume: str | None) -> dict[str, Any]:
        cfg, samples = run.cfg.train, self.data.samples
        steps = optimizer_steps(run, len(samples))
        apply_liger_kernels(run.model, cfg)  # before the method wraps the layers
        run.model = apply_method(run.model, run.cfg.method, MethodContext(run.tokenizer, samples, total_steps=steps))
        if cfg.gradient_checkpointing:
            run.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(run.model, "enable_input_require_grads"):
                run.model.enable_input_require_grads()  # PEFT: frozen embeddings still need grads flowing through
        trainable, total = count_parameters(run.model)
        run.console.print(
            f"method {run.cfg.method.name}: {trainable:,} trainable of {total:,} parameters ({trainable / total:.2%})"
        )
        opt = prepare_training(run, len(samples))
        teacher = load_teacher(run) if cfg.teacher else None
        cfg = resolve_levers(cfg, run.model, teacher)  # `auto` levers decided for this model and method
        run.console.print(
            f"speed: packing {'on' if cfg.packing else 'off'}, LM-head loss "
            f"{f'chunked ({cfg.loss_chunk_size} rows)' if cfg.loss_chunk_size else 'on full logits'}, "
            f"optimizer {cfg.optimizer}"
        )
        return train_loop(
            run,
            opt,
            len(samples),
            build_make_batch(samples, cfg, run.tokenizer.pad_token_id, run.vision),
            sft_objective(run.model, cfg, teacher),  # speed levers: packing, chunked head
            balanced_weights(run.cfg, self.data.records),
            resume,
            epoch_make_batch=self.epoch_make_batch(run, cfg),
        )

    def finish(self, run: Run) -> dict[str, Any]:
        if run.cfg.train.save_fisher and run.accelerator.is_main_process:
            save_run_fisher(run, self.data)
        out = {"train_samples": len(self.data.samples), "rejected_records": len(self.data.rejects)}
        if self.augmented:
            out["augmented_samples"] = {str(e): c for e, c in sorted(self.augmented.items())}
        return out


def planned_epochs(run: Run, n_samples: int) -> int:
    """Epochs the loop enters for the run's optimizer steps (an accumulation group never spans two epochs)."""
    tcfg = run.cfg.train
    per_epoch = batches_per_epoch(n_samples, tcfg.batch_size, run.accelerator.num_processes)
    steps_per_epoch = math.ceil(per_epoch / tcfg.gradient_accumulation_steps)
    return max(1, math.ceil(optimizer_steps(run, n_samples) / max(steps_per_epoch, 1)))


def load_teacher(run: Run):
    """Teacher for logit distillation: any model reference thinktune can load, frozen, on the run's device."""
    teacher, _, _ = load_pretrained(
        run.cfg.model.model_copy(update={"name_or_path": run.cfg.train.teacher, "gguf_file": None})
    )
    teacher.eval().requires_grad_(False)
    return teacher.to(run.accelerator.device)


def save_run_fisher(run: Run, data: TrainingData) -> None:
    """fisher.pt for a later run's EWC (train.ewc_fisher): Fisher of this task's loss at the tuned weights."""
    model = run.accelerator.unwrap_model(run.model)
    params = optimizer_parameters(model, run.cfg.method)
    batches = [
        {
            k: v.to(run.accelerator.device)
            for k, v in pad_batch(data.samples[i : i + 4], run.tokenizer.pad_token_id).items()
        }
        for i in range(0, min(len(data.samples), 64), 4)
    ]
    save_fisher(run.dir / "fisher.pt", compute_fisher(model, batches, params), params)


def run_sft(cfg: RunConfig, console: Console | None = None, resume: str | None = None) -> dict[str, Any]:
    return execute(cfg, SFT(), console, resume)
