"""What a run leaves behind, and how to put it back onto the base model.

Two layouts:
- PEFT methods: `run_dir/adapter/` (adapter_config.json + adapter_model.safetensors), loads with
  `PeftModel.from_pretrained`.
- Methods that change base weights (freeze, full, esft): `run_dir/model/` with `thinktune_method.json` (the method
  config, the base model, the format) and either `trained.safetensors` holding only the changed tensors (freeze, esft;
  ESFT stores only the selected expert rows of each fused tensor, listed under `rows`), or a complete Hugging Face
  model (full: loadable on its own as `model.name_or_path`).

`load_trained(base, path)` restores either layout; `merge_trained(base, path)` returns a plain transformers model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from thinktune.config import MethodConfig
from thinktune.errors import ConfigError, ModelNotFoundError
from thinktune.methods.base import MODEL_DIR

METHOD_FILE = "thinktune_method.json"
TENSORS_FILE = "trained.safetensors"


def _meta(model: torch.nn.Module, cfg: MethodConfig, fmt: str, **extra: Any) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return {
        "format": fmt,
        "method": cfg.name,
        "base_model": getattr(config, "_name_or_path", None),
        "model_type": getattr(config, "model_type", None),
        "method_config": cfg.model_dump(mode="json"),
        **extra,
    }


def save_changed_tensors(
    model: torch.nn.Module,
    cfg: MethodConfig,
    run_dir: Path,
    names: list[str],
    rows: dict[str, list[int]] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """`run_dir/model/trained.safetensors` with the named parameters; for names in `rows`, only those rows (dim 0)."""
    out = run_dir / MODEL_DIR
    out.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    rows = rows or {}
    tensors = {}
    for name in names:
        t = params[name].detach()
        if name in rows:
            t = t[torch.tensor(rows[name], dtype=torch.long, device=t.device)]
        tensors[name] = t.contiguous().cpu()
    save_file(tensors, str(out / TENSORS_FILE), metadata={"format": "pt"})
    meta = _meta(model, cfg, "tensors", files=[TENSORS_FILE], tensors=len(tensors), rows=rows, **(extra or {}))
    (out / METHOD_FILE).write_text(json.dumps(meta, indent=2))
    return out


def save_full_model(model: PreTrainedModel, cfg: MethodConfig, run_dir: Path) -> Path:
    out = run_dir / MODEL_DIR
    model.save_pretrained(out)
    files = sorted(p.name for p in out.glob("*.safetensors"))
    (out / METHOD_FILE).write_text(json.dumps(_meta(model, cfg, "full", files=files), indent=2))
    return out


def read_method_file(path: Path) -> dict[str, Any] | None:
    f = Path(path) / METHOD_FILE
    return json.loads(f.read_text()) if f.is_file() else None


@torch.no_grad()
def load_tensors_into(model: torch.nn.Module, path: Path, meta: dict[str, Any]) -> None:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    rows = meta.get("rows", {})
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


def load_trained(base_model: PreTrainedModel, path: str | Path) -> torch.nn.Module:
    """The base model with what a run trained put back: a PeftModel for adapters, the same model with the changed
    tensors written in place, or (full fine-tuning) the saved complete model on the base's device and dtype."""
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        from thinktune.methods.prompts import align_prompt_logits

        return align_prompt_logits(PeftModel.from_pretrained(base_model, path))
    meta = read_method_file(path)
    if meta is None:
        raise ModelNotFoundError(f"{path}: neither a PEFT adapter (adapter_config.json) nor a thinktune {METHOD_FILE}")
    if meta.get("model_type") and meta["model_type"] != base_model.config.model_type:
        raise ModelNotFoundError(
            f"{path}: trained on a '{meta['model_type']}' model, base is '{base_model.config.model_type}'"
        )
    if meta["format"] == "full":
        # A complete model, saved in its checkpoint layout (transformers re-splits fused experts on save).
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, dtype=base_model.dtype).to(base_model.device)
    load_tensors_into(base_model, path, meta)
    return base_model


def merge_trained(base_model: PreTrainedModel, path: str | Path) -> PreTrainedModel:
    """A plain transformers model with the training folded in (LoRA-style adapters merged into the weights)."""
    model = load_trained(base_model, path)
    if not hasattr(model, "peft_config"):
        return model
    if getattr(model, "peft_config", None) and next(iter(model.peft_config.values())).is_prompt_learning:
        raise ConfigError(f"{path}: soft prompts cannot be merged into weights; load them with load_trained")
    return model.merge_and_unload()
