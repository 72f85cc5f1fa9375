"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG states and data position.

Written to a temp dir then renamed, so a kill at any moment leaves the previous checkpoint loadable; the last K are
kept. Only trainable tensors are stored (a LoRA checkpoint is megabytes, not the whole model).

A PEFT run's checkpoint is also a loadable adapter: `adapter_config.json` + `adapter_model.safetensors` written by the
PeftModel's own save_pretrained next to the resume state, so `PeftModel.from_pretrained(base, "checkpoints/step-N")`
and `thinktune eval/chat/serve/export --adapter runs/x/checkpoints/step-N` work while the run goes on.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from thinktune.errors import UserError

PREFIX = "step-"


@dataclass
class TrainPosition:
    """Where the loop is: optimizer steps done, epoch, and micro-batches consumed in that epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens: int = 0
    bad_steps: int = 0
    lr_scale: float = 1.0
    seconds: float = 0.0  # training time so far, over every resumed segment (train.max_minutes counts it)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    root: Path,
    position: TrainPosition,
    params: list[tuple[str, torch.nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    scheduler,
    keep: int,
    adapter: torch.nn.Module | None = None,
) -> Path:
    """`adapter`: the (unwrapped) PeftModel being trained; save_adapter_files writes its adapter files into the
    checkpoint, inside the same temp dir, so the rename publishes resume state and adapter together."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{position.step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    if adapter is not None:
        save_adapter_files(adapter, tmp)
    save_file({n: p.detach().contiguous().cpu() for n, p in params}, str(tmp / "trainable.safetensors"))
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
        tmp / "state.pt",
    )
    (tmp / "position.json").write_text(json.dumps(asdict(position)))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_adapter_files(model: torch.nn.Module, out: Path) -> None:
    """adapter_config.json + adapter_model.safetensors of the PeftModel in `out`, saved as the run's final adapter
    is (save_lora: PEFT's save_pretrained; a PiSSA init converted to a plain LoRA on the original base)."""
    from thinktune.methods.lora import save_lora

    others = set(getattr(model, "peft_config", {})) - {model.active_adapter}  # GRPO's frozen reference copy
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        for f in save_lora(model, None, Path(scratch)).iterdir():
            if f.name not in others:  # PEFT writes other adapters to subfolders; the trained one is the checkpoint's
                f.rename(out / f.name)


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "position.json").is_file()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX) :]))


def resolve_resume(resume: str | None, root: Path) -> Path | None:
    """`auto` → latest complete checkpoint in the run (None when there is none); a path → that checkpoint."""
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "position.json").is_file():
        raise UserError(f"--resume {resume}: not a checkpoint directory (no position.json)")
    return path


def load_checkpoint(
    path: Path, params: list[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer, scheduler
) -> TrainPosition:
    tensors = load_file(str(path / "trainable.safetensors"))
    missing = [n for n, _ in params if n not in tensors]
    if missing:
        raise UserError(f"{path}: checkpoint does not match this model/method (missing {missing[0]})")
    with torch.no_grad():
        for n, p in params:
            p.copy_(tensors[n].to(p.device, p.dtype))
    state = torch.load(path / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return TrainPosition(**json.loads((path / "position.json").read_text()))
