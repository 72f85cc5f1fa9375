"""FSDP2 (`fully_shard`): parameters, gradients and optimizer state sharded across the processes.

    plugin = fsdp_plugin(cfg.train, "sft")            # None: the processes replicate the model (DDP)
    acc = Accelerator(..., fsdp_plugin=plugin)
    enable_on_cpu(acc, plugin)                         # CPU processes (gloo) shard as GPUs do
    ... acc.prepare(model, optimizer) ...              # Accelerate's FSDP2 path: fully_shard per decoder layer
    sharded(acc) → True                                # what the loop, checkpoints and save ask

`train.distributed=fsdp` (or `accelerate launch` with an FSDP config: `auto`) turns it on. The wrapping, the
gradient reduce-scatter, clipping and the full state dict are Accelerate's and torch's; this module only decides,
and lets CPU processes take the same path: Accelerate enables FSDP for accelerator devices only, while torch's
`fully_shard` runs as well on CPU tensors under the gloo backend (the CPU tests train through it).

What the rest of the engine does differently when sharded:
- the parameters the loop steps are the sharded ones (DTensors): `local_or_full` turns a norm over them into a
  number (a collective: every process calls it in the same order);
- a checkpoint holds each process's shard of the trainable weights and optimizer state (`shard_state`), so resuming
  needs the same number of processes; the PEFT adapter inside it is gathered on the main process;
- saving and the evaluation after training use the whole model, gathered on the main process (run.py).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator

from thinktune.config import TrainConfig
from thinktune.errors import ConfigError

# Settings the sharded path does not run, with the reason (refused in one line by `fsdp_plugin`).
UNSHARDED_ONLY = {
    "eval_steps": "validation runs the model on the main process alone",
    "load_best_at_end": "it keeps the best weights of validation, which runs on the main process alone",
    "torch_compile": "compiling before Accelerate shards the layers is not a tested path",
    "save_fisher": "the Fisher pass runs the model on the main process alone",
}
METHODS = ("lora", "full", "freeze")  # the methods the sharded path trains and tests


def launched_with_fsdp() -> bool:
    """`accelerate launch` with an FSDP config (distributed_type: FSDP) exports this to every process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def wants_fsdp(cfg: TrainConfig) -> bool:
    return cfg.distributed == "fsdp" or (cfg.distributed == "auto" and launched_with_fsdp())


def check_fsdp(cfg: TrainConfig, method: str, recipe: str) -> None:
    """One ConfigError line when a sharded run is asked for what it does not run."""
    if not wants_fsdp(cfg):
        if cfg.distributed == "ddp" and launched_with_fsdp():
            raise ConfigError(
                "train.distributed=ddp, but accelerate launch's config asks for FSDP: use train.distributed=fsdp "
                "(or auto), or launch with a DDP config"
            )
        return
    if recipe != "sft":
        raise ConfigError(
            f"train.distributed=fsdp: thinktune {recipe} does not shard its policy (its reference model and sampling "
            "run unsharded); use ddp, or shard `thinktune train`"
        )
    if method not in METHODS:
        raise ConfigError(f"train.distributed=fsdp trains method.name {', '.join(METHODS)}, not '{method}'")
    given = [k for k in UNSHARDED_ONLY if getattr(cfg, k)]
    if given:
        raise ConfigError(
            f"train.distributed=fsdp: train.{given[0]} is not available when sharded ({UNSHARDED_ONLY[given[0]]})"
        )
    if launched_with_fsdp() and os.environ.get("FSDP_VERSION", "1") != "2":
        raise ConfigError("accelerate launch's FSDP config has fsdp_version 1: thinktune shards with FSDP2 (set 2)")


def fsdp_plugin(cfg: TrainConfig, method: str, recipe: str):
    """Accelerate's FSDP2 plugin for a sharded run, or None. Under `accelerate launch` the plugin reads that
    config (FSDP_* variables); `--set train.distributed=fsdp` alone shards every decoder layer and the root."""
    check_fsdp(cfg, method, recipe)
    if not wants_fsdp(cfg):
        return None
    from accelerate import FullyShardedDataParallelPlugin

    if launched_with_fsdp():
        return FullyShardedDataParallelPlugin()
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        reshard_after_forward=True,
        state_dict_type="SHARDED_STATE_DICT",
        cpu_ram_efficient_loading=False,
    )


def enable_on_cpu(acc: Accelerator, plugin) -> None:
    """A sharded run needs two processes or more. Accelerate keeps CPU process groups as MULTI_CPU (replicated)
    even when given a plugin; mark both of its state objects FSDP, which is all its FSDP2 path checks. A no-op where
    Accelerate already did (GPUs)."""
    if plugin is None:
        return
    if acc.num_processes < 2:
        raise ConfigError(
            "train.distributed=fsdp shards across processes: run with --num-processes 2 or more (or accelerate launch)"
        )
    if acc.is_fsdp2:
        return
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    acc.state.distributed_type = DistributedType.FSDP
    acc.state.fsdp_plugin = plugin


def sharded(acc: Accelerator) -> bool:
    return bool(getattr(acc, "is_fsdp2", False))


def local_or_full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor: a DTensor's full value (all-gathered or all-reduced: a collective), anything else as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def to_local(t: Any) -> Any:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def shard_state(
    params: list[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict]:
    """This process's shard of the trainable weights and of the optimizer state, as plain tensors."""
    weights = {n: to_local(p.detach()).contiguous().cpu() for n, p in params}
    state = optimizer.state_dict()
    state["state"] = {i: {k: to_local(v) for k, v in s.items()} for i, s in state["state"].items()}
    return weights, state


def load_shard_state(
    params: list[tuple[str, torch.nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    state: dict,
) -> None:
    """Put `shard_state`'s tensors back into the sharded parameters and optimizer of a run with the same layout."""
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        for n, p in params:
            local = weights[n].to(p.device, p.dtype)
            if isinstance(p, DTensor):
                p.to_local().copy_(local)
            else:
                p.copy_(local)
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    for i, s in state["state"].items():
        p = ordered[int(i)]
        if isinstance(p, DTensor):
            for k, v in s.items():
                if torch.is_tensor(v) and v.shape == p.to_local().shape and k != "step":
                    s[k] = DTensor.from_local(v, p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
    optimizer.load_state_dict(state)
