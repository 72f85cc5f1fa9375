"""What a method that changes base weights saves: `run_dir/model/` (the layout and its loading: runs.py).

- `save_changed_tensors`: `trained.safetensors` with only the changed tensors (freeze, progressive; ESFT stores only
  the selected expert rows of each fused tensor, listed under `rows`), beside `thinktune_method.json` (the method
  config, the base model, the format).
- `save_full_model`: a complete Hugging Face model (full fine-tuning: loadable on its own as `model.name_or_path`).

PEFT methods save `run_dir/adapter/` with PeftModel.save_pretrained (methods/base.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel

from thinktune.config import MethodConfig
from thinktune.runs import METHOD_FILE, MODEL, TRAINED


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
    out = run_dir / MODEL
    out.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    rows = rows or {}
    tensors = {}
    for name in names:
        t = params[name].detach()
        if name in rows:
            t = t[torch.tensor(rows[name], dtype=torch.long, device=t.device)]
        tensors[name] = t.contiguous().cpu()
    save_file(tensors, str(out / TRAINED), metadata={"format": "pt"})
    meta = _meta(model, cfg, "tensors", files=[TRAINED], tensors=len(tensors), rows=rows, **(extra or {}))
    (out / METHOD_FILE).write_text(json.dumps(meta, indent=2))
    return out


def save_full_model(model: PreTrainedModel, cfg: MethodConfig, run_dir: Path) -> Path:
    out = run_dir / MODEL
    model.save_pretrained(out)
    files = sorted(p.name for p in out.glob("*.safetensors"))
    (out / METHOD_FILE).write_text(json.dumps(_meta(model, cfg, "full", files=files), indent=2))
    return out
