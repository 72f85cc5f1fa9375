"""The run directory: its layout, what a run produced, and how to load the model it trained.

    runs/<name>/
      config.yaml            CONFIG       the resolved config
      adapter/               ADAPTER      PEFT methods: adapter_config.json + weights (PeftModel.from_pretrained)
      model/                 MODEL        methods that change base weights: thinktune_method.json (the method
                                          config, the base, the format) and either
        trained.safetensors  TRAINED        only the changed tensors (freeze, progressive; ESFT: only the selected
                                            experts' rows, listed under `rows`)
        *.safetensors + config.json         a complete transformers model (full)
      checkpoints/step-N/    CHECKPOINTS  resumable state
      eval/                  EVAL         before.json, after.json
      summary.json           SUMMARY      the headline numbers
      export/FORMAT/         EXPORT       `thinktune export` artefacts
      metrics.jsonl, tensorboard/, plots/, rejects.jsonl   the training loop's logs (train/engine)

Eval, chat, serve, deploy and export read a run only through this module: `open_run(path)` checks it is one,
`RunDir.produced()` says what training saved (a `Trained`: adapter, changed tensors, or full model), and
`load_trained(base, path)` puts it onto a loaded base model. Methods write the layout with these names
(methods/base.py, methods/trained.py). Torch, PEFT and transformers are imported only when a model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from thinktune.config import RunConfig, load_config
from thinktune.errors import ConfigError, ModelNotFoundError

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel

CONFIG = "config.yaml"
ADAPTER = "adapter"
MODEL = "model"
TRAINED = "trained.safetensors"
METHOD_FILE = "thinktune_method.json"
PEFT_CONFIG = "adapter_config.json"
HF_CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
EVAL = "eval"
SUMMARY = "summary.json"
EXPORT = "export"

Kind = Literal["adapter", "tensors", "full"]
KIND_WORDS = {"adapter": "a PEFT adapter", "tensors": "trained tensors of the base", "full": "a full model"}


@dataclass(frozen=True)
class Trained:
    """What training saved: a PEFT `adapter` dir, the changed `tensors` of the base (freeze, ESFT), or a `full`
    model (loadable on its own)."""

    kind: Kind
    path: Path

    def describe(self) -> str:
        return KIND_WORDS[self.kind]


def trained_at(path: str | Path) -> Trained | None:
    """What the folder `path` itself holds, or None."""
    path = Path(path)
    if (path / PEFT_CONFIG).is_file():
        return Trained("adapter", path)
    meta = read_method_file(path)
    if meta is not None:
        return Trained("tensors" if meta["format"] == "tensors" else "full", path)
    if (path / HF_CONFIG).is_file():  # a transformers model saved into the run (a merged export, say)
        return Trained("full", path)
    return None


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL

    def read_config(self) -> RunConfig:
        return load_config(self.config)

    @property
    def name(self) -> str:
        return self.read_config().name

    def produced(self) -> Trained | None:
        """The adapter or the changed/full weights training saved; None while there are none (still training)."""
        for folder in (self.path / ADAPTER, self.path / MODEL):
            trained = trained_at(folder)
            if trained is not None:
                return trained
        return None


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def open_run(path: str | Path) -> RunDir:
    if not is_run_dir(path):
        raise ModelNotFoundError(
            f"{path}: not a run directory (no {CONFIG}); pass the directory `thinktune train` wrote"
        )
    return RunDir(Path(path))


def run_of(path: str | Path) -> RunDir | None:
    """The run a folder belongs to: the folder itself, or its parent (`runs/x/adapter`, `runs/x/model`)."""
    path = Path(path)
    for candidate in (path, path.parent):
        if is_run_dir(candidate):
            return RunDir(candidate)
    return None


def find_trained(path: str | Path) -> Trained | None:
    """What training saved, given its folder (adapter/, model/) or the run directory holding it."""
    return trained_at(path) or RunDir(Path(path)).produced()


def read_method_file(path: str | Path) -> dict[str, Any] | None:
    f = Path(path) / METHOD_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def load_trained(base_model: PreTrainedModel, path: str | Path) -> torch.nn.Module:
    """The base model with what a run trained put back (`path`: the adapter/ or model/ folder, or the run): a
    PeftModel for adapters, the same model with the changed tensors written in place, or (full fine-tuning) the
    saved complete model on the base's device and dtype."""
    trained = find_trained(path)
    if trained is None:
        raise ModelNotFoundError(
            f"{path}: not a trained adapter (no {PEFT_CONFIG} or {METHOD_FILE}, nor a run dir holding one)"
        )
    if trained.kind == "adapter":
        from peft import PeftModel

        return align_prompt_logits(PeftModel.from_pretrained(base_model, trained.path))
    meta = read_method_file(trained.path) or {}
    if meta.get("model_type") and meta["model_type"] != base_model.config.model_type:
        raise ModelNotFoundError(
            f"{trained.path}: trained on a '{meta['model_type']}' model, base is '{base_model.config.model_type}'"
        )
    if trained.kind == "full":
        # A complete model, saved in its checkpoint layout (transformers re-splits fused experts on save).
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(trained.path, dtype=base_model.dtype).to(base_model.device)
    load_tensors_into(base_model, trained.path, meta)
    return base_model


def merge_trained(base_model: PreTrainedModel, path: str | Path) -> PreTrainedModel:
    """A plain transformers model with the training folded in (LoRA-style adapters merged into the weights)."""
    model = load_trained(base_model, path)
    if not hasattr(model, "peft_config"):
        return model
    if getattr(model, "peft_config", None) and next(iter(model.peft_config.values())).is_prompt_learning:
        raise ConfigError(f"{path}: soft prompts cannot be merged into weights; load them with load_trained")
    return model.merge_and_unload()


def load_tensors_into(model: torch.nn.Module, path: str | Path, meta: dict[str, Any]) -> None:
    """Write the saved tensors into `model` in place; names in `meta["rows"]` hold only those rows (dim 0)."""
    import torch
    from safetensors.torch import load_file

    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    rows = meta.get("rows", {})
    with torch.no_grad():
        for file in meta["files"]:
            for name, value in load_file(str(Path(path) / file)).items():
                target = params.get(name, buffers.get(name))
                if target is None:
                    raise ModelNotFoundError(f"{path}: tensor '{name}' does not exist in this base model")
                if name in rows:
                    idx = torch.tensor(rows[name], dtype=torch.long, device=target.device)
                    target.index_copy_(0, idx, value.to(target.device, target.dtype))
                else:
                    target.copy_(value.to(target.device, target.dtype))


def align_prompt_logits(model: PeftModel) -> PeftModel:
    """Make a prompt-learning adapter (prompt / P- / prefix tuning) work as the others do: logits line up with the
    input again when it prepends virtual tokens, and `generate` decodes with its KV cache."""
    config = next(iter(model.peft_config.values()))
    if config.is_prompt_learning:
        _show_cache_to_peft(model)
    if config.is_prompt_learning and config.peft_type.value != "PREFIX_TUNING":
        model.register_forward_hook(_drop_virtual_positions, with_kwargs=True)
    return model


def _show_cache_to_peft(model: PeftModel) -> None:
    """transformers 5 hands the generation cache over as `cache`; PEFT's prompt-learning generation looks for
    `past_key_values` and, not finding it, injects the virtual tokens again and feeds the whole sequence at every step
    on top of the cache: wrong tokens after the first, and a quadratic slowdown. Rename it where PEFT looks."""
    prepare = getattr(model, "base_model_prepare_inputs_for_generation", None)
    if prepare is None:
        return

    def prepare_with_cache(*args, **kwargs):
        inputs = prepare(*args, **kwargs)
        if inputs.get("past_key_values") is None and inputs.get("cache") is not None:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    model.base_model_prepare_inputs_for_generation = prepare_with_cache


def _drop_virtual_positions(module, args, kwargs, output):
    ref = kwargs.get("input_ids", args[0] if args else None)
    if ref is None:
        ref = kwargs.get("inputs_embeds")
    logits = getattr(output, "logits", None)
    if ref is not None and logits is not None and logits.shape[1] > ref.shape[1]:
        output.logits = logits[:, logits.shape[1] - ref.shape[1] :]
    return output
