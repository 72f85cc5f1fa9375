"""What every exporter starts from: the source model and the export options. The source is the base weights plus
what a run trained: a PEFT adapter (unmerged until an exporter merges it), or the tensors a freeze/ESFT run changed
(written into the base at load, runs.load_trained).

The source is loaded in float32 on the CPU whatever `model.dtype` says: verification compares artefacts against it,
and half-precision references would hide the error we want to measure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from thinktune.config import ExportConfig, ModelConfig
from thinktune.errors import ModelNotFoundError
from thinktune.models import load_pretrained, resolve_model
from thinktune.models.loading import ModelSource
from thinktune.runs import Trained, load_trained

# Chat prompts every artefact is checked on (rendered with the model's chat template).
TEST_PROMPTS = (
    "Tom has 5 apples. He buys 3 more apples. How many apples does Tom have now?",
    "What is 9 squared?",
    "Please reason step by step: a train travels 60 miles per hour for 2 hours. How far does it travel?",
)


@dataclass(frozen=True)
class ExportOptions:
    """`ExportConfig` plus the knobs that only `thinktune export` has (not yet config keys)."""

    gguf_type: str = "q8_0"
    onnx_kv_cache: bool = True
    onnx_exporter: str = "dynamo"  # "dynamo" (torch.export) or "torchscript"; dynamo falls back to torchscript
    max_shard_size: str = "2GB"
    merged_dtype: str = "auto"  # "auto" = the base checkpoint's dtype; float32 | bfloat16 | float16
    quant_device: str = "cpu"  # int8: "cpu" = onnxruntime dynamic int8; "cuda" = bitsandbytes
    quant_bits: int = 8  # int8 on cuda: 8 or 4
    int8_scheme: str = "blockwise"  # int8 on cpu: "blockwise" (MatMulNBits) or "per-tensor" (quantize_dynamic)
    prompts: tuple[str, ...] = TEST_PROMPTS
    max_new_tokens: int = 16  # greedy tokens compared per prompt
    verify: bool = True  # False: figures are still measured and written, but one beyond its tolerance does not fail
    check_with: tuple[str, ...] = ()  # runtimes that load the artefact too: "llama-cpp" (GGUF)

    @classmethod
    def from_config(cls, cfg: ExportConfig, **extra) -> ExportOptions:
        return cls(gguf_type=cfg.gguf_type, onnx_kv_cache=cfg.onnx_kv_cache, **extra)

    def but(self, **changes) -> ExportOptions:
        return replace(self, **changes)


@dataclass
class ExportSource:
    """The model an export starts from. `model` is a PeftModel while the adapter is unmerged; with `tensors` (a
    freeze/ESFT run's model/ folder) it is the base with them already written in."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    origin: ModelSource
    adapter: Path | None = None
    checkpoint_dtype: str = "float32"  # how the base weights are stored (the model itself is loaded in float32)
    merged: bool = field(default=False)
    name_or_path: str = ""  # the model reference as configured (the bundled name, not its cache directory)
    tensors: Path | None = None

    @property
    def trained(self) -> Path | None:
        """The folder of what a run trained (adapter or tensors), if any."""
        return self.adapter or self.tensors

    @property
    def description(self) -> str:
        return self.origin.description + (f" + {self.trained}" if self.trained else "")

    def merge(self) -> PreTrainedModel:
        """Fold the adapter into the base weights (in place: the unmerged model is gone afterwards)."""
        if self.adapter is not None and not self.merged:
            self.model = self.model.merge_and_unload()
            self.merged = True
        return self.model

    def chat_texts(self, prompts: tuple[str, ...] | list[str]) -> list[str]:
        """Each prompt rendered as a one-turn chat with the model's template, ready for the assistant's answer."""
        return [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            for text in prompts
        ]

    def chat_ids(self, prompts: tuple[str, ...] | list[str]) -> list[list[int]]:
        """Token ids of each prompt rendered as a one-turn chat, ready for the assistant's answer."""
        return [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in self.chat_texts(prompts)]


def base_config(model_cfg: ModelConfig) -> PreTrainedConfig:
    """The base's config without loading the weights (to refuse an unsupported export early)."""
    from transformers import AutoConfig

    origin = resolve_model(model_cfg.name_or_path, model_cfg.gguf_file, model_cfg.revision)
    return AutoConfig.from_pretrained(
        origin.path, gguf_file=origin.gguf_file, trust_remote_code=model_cfg.trust_remote_code
    )


def takes_images(config: PreTrainedConfig) -> bool:
    """A vision-language model (Qwen2.5-VL, ...): its config has a vision tower."""
    return getattr(config, "vision_config", None) is not None


def load_source(model_cfg: ModelConfig, trained: Trained | None = None) -> ExportSource:
    """The base in float32 on the CPU, with `trained` (a PEFT adapter, or a freeze/ESFT run's tensors) put back."""
    model, tokenizer, origin = load_pretrained(model_cfg.model_copy(update={"dtype": "float32"}))
    model = model.to(torch.device("cpu")).eval()
    if trained is not None and trained.kind not in ("adapter", "tensors"):
        raise ModelNotFoundError(f"{trained.path}: {trained.describe()}, not an adapter or trained tensors")
    if trained is not None:
        model = load_trained(model, trained.path).eval()
    adapter = trained.path if trained is not None and trained.kind == "adapter" else None
    tensors = trained.path if trained is not None and trained.kind == "tensors" else None
    return ExportSource(
        model,
        tokenizer,
        origin,
        adapter,
        checkpoint_dtype(origin),
        name_or_path=model_cfg.name_or_path,
        tensors=tensors,
    )


def checkpoint_dtype(origin: ModelSource) -> str:
    """The dtype a Hugging Face checkpoint stores (float32 for GGUF files, which are dequantised)."""
    config = origin.path / "config.json"
    if origin.gguf_file or not config.is_file():
        return "float32"
    stored = json.loads(config.read_text())
    dtype = stored.get("dtype") or stored.get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"


def stop_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> list[int]:
    """End-of-turn token ids: the tokenizer's eos, the generation config's eos, and ChatML's `<|im_end|>`."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>") if t in vocab)
    return sorted(i for i in ids if i is not None)
