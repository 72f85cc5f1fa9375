"""QLoRA (Dettmers et al. 2023): LoRA on a frozen base quantised to 4-bit NormalFloat with bitsandbytes.

    method: {name: qlora, r: 16, alpha: 32}

Needs a CUDA GPU and `pip install bitsandbytes`; `check_qlora` says so in one line before anything is loaded. The
base is best loaded quantised straight away (`quantization_config(cfg)` as `from_pretrained(quantization_config=)`);
a model handed over in full precision is reloaded once in 4-bit from its own directory.
"""

from __future__ import annotations

import importlib.util

import torch
from transformers import PreTrainedModel

from thinktune.config import MethodConfig
from thinktune.errors import EnvironmentProblem
from thinktune.methods.base import MethodContext
from thinktune.methods.lora import apply_lora, check_lora


def check_qlora(cfg: MethodConfig) -> None:
    if not torch.cuda.is_available():
        raise EnvironmentProblem(
            "method.name=qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); on this machine use method.name=lora"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise EnvironmentProblem("method.name=qlora needs bitsandbytes: pip install bitsandbytes")
    check_lora(cfg)


def quantization_config(cfg: MethodConfig):
    """4-bit NF4 with double quantisation and bf16 compute: the QLoRA paper's recipe."""
    from transformers import BitsAndBytesConfig

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float16,
    )


def is_4bit(model: PreTrainedModel) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False))


def load_4bit(model: PreTrainedModel, cfg: MethodConfig) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    source = getattr(model, "name_or_path", None) or model.config._name_or_path
    if not source:
        raise EnvironmentProblem("method.name=qlora: the model has no directory to reload it from in 4-bit")
    return AutoModelForCausalLM.from_pretrained(
        source, quantization_config=quantization_config(cfg), device_map={"": torch.cuda.current_device()}
    )


def apply_qlora(model: PreTrainedModel, cfg: MethodConfig, ctx: MethodContext):
    check_qlora(cfg)  # before touching the model: fails fast on machines without CUDA
    from peft import prepare_model_for_kbit_training

    if not is_4bit(model):
        model = load_4bit(model, cfg)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return apply_lora(model, cfg, ctx)
