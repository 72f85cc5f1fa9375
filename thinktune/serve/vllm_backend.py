"""`--backend vllm`: hand the same config to vLLM's OpenAI server (continuous batching, paged attention; CUDA only).

Equivalent command line (what `vllm_args` builds):
    vllm serve MODEL_DIR --served-model-name NAME --host H --port P --max-num-seqs MAX_BATCH \\
        --enable-lora --max-lora-rank R --lora-modules name=adapter_dir ... [--reasoning-parser qwen3|deepseek_r1] \\
        [--enable-auto-tool-choice --tool-call-parser hermes|deepseek_v3]
Not exercised by the test suite (no GPU there): only the argument list and the missing-vLLM error are tested.
"""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
import sys
from pathlib import Path

from thinktune.config import RunConfig
from thinktune.errors import EnvironmentProblem, ModelNotFoundError
from thinktune.models import resolve_model
from thinktune.models.loading import ModelSource, load_tokenizer, vllm_model_path

VLLM_SERVER = "vllm.entrypoints.openai.api_server"
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts


def require_vllm(setting: str = "--backend vllm", instead: str = "serve with --backend transformers") -> None:
    """One line when `setting` cannot run here: no vllm package, or no CUDA GPU; `instead` says what can."""
    if importlib.util.find_spec("vllm") is None:
        raise EnvironmentProblem(
            f"{setting} needs the vllm package on Linux with an NVIDIA GPU (CUDA): pip install vllm; or {instead}"
        )
    import torch

    if not torch.cuda.is_available():
        raise EnvironmentProblem(
            f"{setting} needs a CUDA GPU and none is visible (torch.cuda.is_available() is False); {instead}"
        )


def max_lora_rank(adapters: dict[str, str]) -> int:
    ranks = []
    for path in adapters.values():
        meta = json.loads((Path(path) / "adapter_config.json").read_text())
        ranks.append(int(meta.get("r") or 8))
        ranks.extend(int(r) for r in (meta.get("rank_pattern") or {}).values())
    need = max(ranks, default=8)
    return next((r for r in LORA_RANKS if r >= need), need)


def reasoning_parser(model_dir: Path) -> str | None:
    """vLLM's parsers need `<think>`/`</think>` as tokens; Qwen3 has its own, R1-style models use deepseek_r1."""
    config = model_dir / "config.json"
    model_type = json.loads(config.read_text()).get("model_type", "") if config.is_file() else ""
    if model_type.startswith("qwen3"):
        return "qwen3"
    vocab = load_tokenizer(resolve_model(str(model_dir))).get_vocab() if config.is_file() else {}
    return "deepseek_r1" if "</think>" in vocab else None


def tool_call_parser(chat_template: str) -> str | None:
    """vLLM's parser for the tool-call syntax the chat template teaches (the syntax our server reads too)."""
    if "<tool_call>" in chat_template:
        return "hermes"  # Qwen2.5 / Qwen3
    if "<｜tool▁calls▁begin｜>" in chat_template:
        return "deepseek_v3"  # DeepSeek-V3 / R1
    return None


def chat_template(cfg: RunConfig, source: ModelSource) -> str:
    if cfg.model.chat_template or source.gguf_file:
        return cfg.model.chat_template or ""
    try:
        return load_tokenizer(source).chat_template or ""
    except ModelNotFoundError:  # no template at all: vLLM serves completions only
        return ""


def vllm_args(cfg: RunConfig, served_model_name: str | None = None) -> list[str]:
    source = resolve_model(cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.revision)
    model = vllm_model_path(source)
    args = [
        "--model", model,
        "--served-model-name", served_model_name or cfg.model.name_or_path,
        "--host", cfg.serve.host,
        "--port", str(cfg.serve.port),
        "--max-num-seqs", str(cfg.serve.max_batch_size),
    ]  # fmt: skip
    if cfg.model.dtype != "auto":
        args += ["--dtype", cfg.model.dtype]
    if cfg.model.trust_remote_code:
        args.append("--trust-remote-code")
    if cfg.model.chat_template:
        args += ["--chat-template", cfg.model.chat_template]
    parser = None if source.gguf_file else reasoning_parser(source.path)
    if parser:
        args += ["--reasoning-parser", parser]
    tools = tool_call_parser(chat_template(cfg, source))
    if tools:  # without these vLLM refuses requests with tools and tool_choice "auto"
        args += ["--enable-auto-tool-choice", "--tool-call-parser", tools]
    if cfg.serve.adapters:
        args += ["--enable-lora", "--max-loras", str(len(cfg.serve.adapters))]
        args += ["--max-lora-rank", str(max_lora_rank(cfg.serve.adapters))]
        args += ["--lora-modules", *(f"{name}={path}" for name, path in cfg.serve.adapters.items())]
    return args


def run_vllm(cfg: RunConfig, served_model_name: str | None = None, api_key: str | None = None) -> None:
    """Start vLLM's OpenAI server in this process (blocks). The key goes by environment, not argv (`ps` shows argv)."""
    require_vllm()
    args = vllm_args(cfg, served_model_name)
    if api_key:
        os.environ["VLLM_API_KEY"] = api_key
    sys.argv = [VLLM_SERVER, *args]
    runpy.run_module(VLLM_SERVER, run_name="__main__", alter_sys=True)
