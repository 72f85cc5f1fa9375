"""Speed levers of a training run, switched on by `TrainConfig`: packing, torch.compile, threads, Liger kernels (the
chunked LM-head loss is the SFT objective's: train/objectives/sft.py).

What the SFT recipe calls (all levers off = exactly the plain padded, full-logits path):

    check_speed_environment(cfg)                                       # before loading: CUDA-only levers
    configure_threads(cfg.num_threads)                                 # before any torch work
    apply_liger_kernels(model, cfg)                                    # CUDA: Liger RMSNorm / RoPE / SwiGLU
    compile_model(model, cfg)                                          # after the method and gradient checkpointing
    make_batch = build_make_batch(samples, cfg, tokenizer.pad_token_id)

Measured on SmolLM2-135M + LoRA, CPU: see docs/performance.md (`python bench/train_throughput.py`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from thinktune.config import TrainConfig
from thinktune.data.collate import collate_packed, pad_batch
from thinktune.data.packing import pack
from thinktune.data.render import TokenizedSample
from thinktune.errors import EnvironmentProblem
from thinktune.train.engine.chunked_loss import unwrap_causal_lm

Batch = dict[str, torch.Tensor]


# --- environment + kernels ----------------------------------------------------------------------------------------
def check_speed_environment(cfg: TrainConfig) -> None:
    """One line, before any weights load, when a lever cannot run on this machine."""
    if cfg.liger_kernels:
        if not torch.cuda.is_available():
            raise EnvironmentProblem("train.liger_kernels needs a CUDA GPU (Triton kernels); set it false on CPU")
        if importlib.util.find_spec("liger_kernel") is None:
            raise EnvironmentProblem("train.liger_kernels needs liger-kernel: pip install 'thinktune[speed]'")


def apply_liger_kernels(model: nn.Module, cfg: TrainConfig) -> bool:
    """Patch this model instance with Liger's fused RMSNorm, RoPE and SwiGLU kernels (not its loss: thinktune's
    chunked head, `loss_chunk_size`, already avoids the logits tensor). Returns whether anything was patched."""
    if not cfg.liger_kernels:
        return False
    check_speed_environment(cfg)
    from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(
        model=unwrap_causal_lm(model),
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
    )
    return True


# --- threads ------------------------------------------------------------------------------------------------------
def configure_threads(num_threads: int | None) -> int:
    """Intra-op threads for torch (None: torch's default, one per core); returns the count in effect.

    On a CPU shared with other jobs, fewer threads than cores can be faster: an OpenMP parallel region waits for its
    slowest thread, and a descheduled thread stalls all of them (measured in docs/performance.md). OMP_NUM_THREADS and
    OMP_WAIT_POLICY only take effect when set before the process starts.
    """
    if num_threads:
        torch.set_num_threads(num_threads)
    return torch.get_num_threads()


# --- torch.compile ------------------------------------------------------------------------------------------------
def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder blocks of a transformers causal LM (through PEFT / DDP / compile wrappers)."""
    lm = unwrap_causal_lm(model)
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else getattr(lm, "model", None)
    layers = getattr(decoder, "layers", None)
    return list(layers) if isinstance(layers, nn.ModuleList) else []


def compile_model(model: nn.Module, cfg: TrainConfig) -> int:
    """With `cfg.torch_compile`, compile each decoder layer in place; returns how many regions were compiled.

    Regional compilation: every layer has the same code, so Dynamo traces one and reuses it (compile time of one block,
    not of the whole model), and the module tree, parameter names, PEFT and checkpoint code stay as they are.
    `dynamic=True`: batch rows and widths change every step (padded or packed), so one graph with symbolic shapes
    is compiled once, instead of a static graph and then recompiles (measured: 3 compiles with the default).
    """
    if not cfg.torch_compile:
        return 0
    layers = decoder_layers(model)
    if not layers:  # an unknown layout: compile the whole forward instead
        model.compile()
        return 1
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


# --- batches ------------------------------------------------------------------------------------------------------
def packed_batch(samples: Sequence[TokenizedSample], pad_id: int) -> Batch:
    """The micro-batch's samples packed best-fit into rows as long as its longest sample, position ids restarting at
    every sample (the model, called without an attention mask, keeps attention inside each sample).

    `attention_mask` here is the 2-D mask of real tokens, for token counts only: a packed batch goes to the model as
    input_ids + position_ids (see `model_inputs`); passing this mask as well would let samples attend to each other.
    Same samples, same trained tokens, same loss as `pad_batch`, without most of the padding.
    """
    seqs = pack(samples, max(len(s.input_ids) for s in samples))
    # Tensors only (TrainLoop moves every value to the device); `model_inputs` adds use_cache=False itself.
    batch = {k: v for k, v in collate_packed(seqs, pad_id).items() if isinstance(v, torch.Tensor)}
    lengths = torch.tensor([len(s.input_ids) for s in seqs])
    batch["attention_mask"] = (torch.arange(batch["input_ids"].shape[1])[None, :] < lengths[:, None]).long()
    return batch


def build_make_batch(
    samples: Sequence[TokenizedSample], cfg: TrainConfig, pad_id: int, vision: Any = None
) -> Callable[[list[int]], Batch]:
    """make_batch(indices) for TrainLoop: padded rows, or packed rows when `cfg.packing`; with a vision-language
    model's `vision`, the batch's images as the model takes them (pixel_values, image_grid_thw), in token order."""
    if cfg.packing:
        return lambda idx: packed_batch([samples[i] for i in idx], pad_id)

    def make(idx: list[int]) -> Batch:
        rows = [samples[i] for i in idx]
        batch = pad_batch(rows, pad_id)
        images = [p for s in rows for p in s.images]
        if vision is not None and images:
            batch.update(vision.pixels(images))
        return batch

    return make


def model_inputs(batch: Batch) -> dict[str, Any]:
    """What the model is called with: input_ids + attention_mask, or for packed batches input_ids + position_ids and
    no cache (transformers reads position-id resets only when there is no mask and no cache)."""
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    images = {k: batch[k] for k in ("pixel_values", "image_grid_thw") if k in batch}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **images}
