"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG states and data position.

Nothing is unpickled on resume (`--resume PATH` may point anywhere): weights and the torch/CUDA generator states are
safetensors, the optimizer and scheduler state dicts (tensors, numbers, lists) are loaded with `weights_only=True`,
Python's and numpy's generator states and the position are JSON. Written to a temp dir then renamed, so a kill at any
moment leaves the previous checkpoint loadable; the last K are kept. Only trainable tensors are stored (a LoRA
checkpoint is megabytes, not the whole model).

A PEFT run's checkpoint is also a loadable adapter: `adapter_config.json` + `adapter_model.safetensors` written by the
PeftModel's own save_pretrained next to the resume state, so `PeftModel.from_pretrained(base, "checkpoints/step-N")`
and `thinktune eval/chat/serve/export --adapter runs/x/checkpoints/step-N` work while the run goes on.

A sharded run (train.distributed=fsdp) holds no process with the whole model: every process writes its shard of the
trainable weights and optimizer state (`trainable.rank<r>.safetensors`, `optimizer.rank<r>.pt`), and `layout.json`
records how many processes a resume needs; the PEFT adapter in it is gathered whole.

A recipe with state of its own beyond weights, optimizer and RNGs (GRPO's rollouts kept for reuse, its refill prompt
stream) gives the loop a `RecipeState`; every process writes its own part (`recipe.rank<r>.safetensors` + `.json`),
staged beside the checkpoint and moved into it before the rename, and reads it back on resume.

`checkpoints/best/` (train.load_best_at_end) holds the best-validated trainable weights and `best.json` (step,
value), written the same atomic way whenever validation finds a new best; a resume loads them back.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from thinktune.errors import UserError

PREFIX = "step-"
BEST = "best"  # train.load_best_at_end: the best-validated weights, so a resumed run still ends with them


class RecipeState(Protocol):
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors (safetensors) and JSON-able values that a resume needs to continue exactly."""

    def load_state(self, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None: ...


def stage_recipe_state(root: Path, step: int, rank: int, state: RecipeState) -> None:
    """This process's recipe state, staged in `root/.recipe-step-N/` for the main process's save_checkpoint."""
    stage = root / f".recipe-{PREFIX}{step}"
    stage.mkdir(parents=True, exist_ok=True)
    tensors, values = state.state()
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(stage / f"recipe.rank{rank}.safetensors")
    )
    (stage / f"recipe.rank{rank}.json").write_text(json.dumps(values))


def stage_shard(root: Path, step: int, rank: int, weights: dict[str, torch.Tensor], optimizer_state: dict) -> None:
    """A sharded run: this process's shard of the trainable weights and optimizer state (sharding.shard_state),
    staged as the recipe state is, moved into the checkpoint by the main process's save_checkpoint."""
    stage = root / f".recipe-{PREFIX}{step}"
    stage.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(stage / f"trainable.rank{rank}.safetensors"))
    torch.save(optimizer_state, stage / f"optimizer.rank{rank}.pt")


def load_recipe_state(path: Path, rank: int, state: RecipeState) -> None:
    values = path / f"recipe.rank{rank}.json"
    if not values.is_file():
        raise UserError(f"{path}: no recipe state for process {rank} (saved by a run with fewer processes?)")
    state.load_state(load_file(str(path / f"recipe.rank{rank}.safetensors")), json.loads(values.read_text()))


@dataclass
class TrainPosition:
    """Where the loop is: optimizer steps done, epoch, and micro-batches consumed in that epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens: int = 0
    bad_steps: int = 0
    seconds: float = 0.0  # training time so far, over every resumed segment (train.max_minutes counts it)


def save_rng_state(out: Path) -> None:
    """Python and numpy generators as JSON; torch's CPU generator and every CUDA device's as safetensors."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    (out / "rng.json").write_text(
        json.dumps(
            {
                "python": [version, list(words), gauss],
                "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
            }
        )
    )
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    save_file(tensors, str(out / "rng.safetensors"))


def load_rng_state(path: Path) -> None:
    state = json.loads((path / "rng.json").read_text())
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    tensors = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors) - 1)]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def save_checkpoint(
    root: Path,
    position: TrainPosition,
    params: list[tuple[str, torch.nn.Parameter]] | None,
    optimizer: torch.optim.Optimizer | None,
    scheduler,
    keep: int,
    adapter: torch.nn.Module | None = None,
    adapter_state: dict[str, torch.Tensor] | None = None,
    processes: int = 1,
) -> Path:
    """`adapter`: the (unwrapped) PeftModel being trained; save_adapter_files writes its adapter files into the
    checkpoint, inside the same temp dir, so the rename publishes resume state and adapter together.
    `params`/`optimizer` None: a sharded run, whose processes staged their shards (`stage_shard`);
    `adapter_state`: then the adapter's tensors, gathered whole."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{position.step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    if adapter is not None:
        save_adapter_files(adapter, tmp, adapter_state)
    state = {"scheduler": scheduler.state_dict()}
    if params is not None:
        save_file({n: p.detach().contiguous().cpu() for n, p in params}, str(tmp / "trainable.safetensors"))
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, tmp / "state.pt")
    save_rng_state(tmp)
    (tmp / "position.json").write_text(json.dumps(asdict(position)))
    (tmp / "layout.json").write_text(json.dumps({"processes": processes, "sharded": params is None}))
    stage = root / f".recipe-{PREFIX}{position.step}"
    if stage.is_dir():  # the recipe state (and shards) every process staged
        for f in stage.iterdir():
            f.rename(tmp / f.name)
        stage.rmdir()
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_best(root: Path, step: int, value: float, weights: dict[str, torch.Tensor]) -> Path:
    """checkpoints/best/: `weights` (the trainable tensors at `step`) and best.json, replacing the previous best."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / BEST
    tmp = Path(tempfile.mkdtemp(prefix=f".{BEST}.", dir=root))
    save_file({n: t.contiguous() for n, t in weights.items()}, str(tmp / "trainable.safetensors"))
    (tmp / "best.json").write_text(json.dumps({"step": step, "value": value}))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def load_best(root: Path) -> tuple[int, float, dict[str, torch.Tensor]] | None:
    """(step, value, CPU weights) from checkpoints/best/, or None when no best was saved."""
    path = root / BEST
    if not (path / "best.json").is_file():
        return None
    best = json.loads((path / "best.json").read_text())
    return int(best["step"]), float(best["value"]), load_file(str(path / "trainable.safetensors"))


def save_adapter_files(model: torch.nn.Module, out: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """adapter_config.json + adapter_model.safetensors of the PeftModel in `out`, saved as the run's final adapter
    is (save_lora: PEFT's save_pretrained; a PiSSA init converted to a plain LoRA on the original base);
    `state_dict`: the model's tensors when the model itself holds only shards."""
    from thinktune.methods.lora import save_lora

    others = set(getattr(model, "peft_config", {})) - {model.active_adapter}  # GRPO's frozen reference copy
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        for f in save_lora(model, None, Path(scratch), state_dict).iterdir():
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


def check_layout(path: Path, processes: int, shard: int | None) -> None:
    """A sharded checkpoint resumes with as many processes, sharded; a whole one with any number, unsharded."""
    layout = json.loads((path / "layout.json").read_text()) if (path / "layout.json").is_file() else {}
    saved_sharded, saved = layout.get("sharded", False), layout.get("processes", 1)
    if saved_sharded and (shard is None or saved != processes):
        raise UserError(
            f"{path}: sharded by {saved} processes (train.distributed=fsdp); resume with --num-processes {saved} "
            "and train.distributed=fsdp"
        )
    if shard is not None and not saved_sharded:
        raise UserError(f"{path}: saved unsharded; resume it without train.distributed=fsdp")


def _load_state(path: Path) -> dict:
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:  # a file that holds more than state dicts: refuse, do not run it
        raise UserError(f"{path}: not a plain optimizer/scheduler state ({str(e).splitlines()[0]})") from None


def load_checkpoint(
    path: Path,
    params: list[tuple[str, torch.nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    scheduler,
    processes: int = 1,
    shard: int | None = None,
) -> TrainPosition:
    """`shard`: this process's index in a sharded run (its shard is what it loads), None when unsharded."""
    check_layout(path, processes, shard)
    name = "trainable.safetensors" if shard is None else f"trainable.rank{shard}.safetensors"
    tensors = load_file(str(path / name))
    missing = [n for n, _ in params if n not in tensors]
    if missing:
        raise UserError(f"{path}: checkpoint does not match this model/method (missing {missing[0]})")
    state = _load_state(path / "state.pt")
    if shard is None:
        with torch.no_grad():
            for n, p in params:
                p.copy_(tensors[n].to(p.device, p.dtype))
        optimizer.load_state_dict(state["optimizer"])
    else:
        from thinktune.train.engine.sharding import load_shard_state

        load_shard_state(params, optimizer, tensors, _load_state(path / f"optimizer.rank{shard}.pt"))
    scheduler.load_state_dict(state["scheduler"])
    if not (path / "rng.json").is_file():
        raise UserError(f"{path}: checkpoint from an older thinktune (no rng.json); start the run again")
    load_rng_state(path)
    known = set(TrainPosition.__dataclass_fields__)
    return TrainPosition(**{k: v for k, v in json.loads((path / "position.json").read_text()).items() if k in known})
