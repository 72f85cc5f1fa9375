"""GGUF LoRA export: a run's PEFT LoRA adapter as a llama.cpp LoRA file, applied at load beside its base GGUF.

    thinktune export --run-dir runs/quickstart --format gguf-lora --gguf-type f16 -o exports/gguf-lora
    llama-cli -m exports/gguf-lora/<base>-f16.gguf --lora exports/gguf-lora/quickstart-lora-f16.gguf
    thinktune serve --backend llamacpp --model BASE.gguf --set serve.adapters.quickstart=runs/quickstart/adapter

Out: `<name>-lora-<type>.gguf`, what llama.cpp's `convert_lora_to_gguf.py` writes (`general.type` adapter,
`adapter.type` lora, `adapter.lora.alpha`, and one `<base tensor>.lora_a` / `.lora_b` pair per adapted matrix, named
as in the base GGUF, Q/K rows permuted for Llama as the base's are), plus the base itself as GGUF (unmerged,
`--gguf-type`) to apply it to. Any GGUF of the same base with llama.cpp's tensor names takes the adapter. Verified by
llama.cpp: the base GGUF with the adapter applied, against the PEFT model (base + adapter in PyTorch) on the test
prompts: tokenizer, logits, top-1 and greedy output.

`write_gguf_lora` needs only the adapter folder and the base's config, so the llama.cpp server backend converts the
PEFT adapters of `serve.adapters` at start-up with it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q

from thinktune.errors import UserError
from thinktune.export import gguf_file
from thinktune.export.parity import torch_greedy, torch_logits
from thinktune.export.source import ExportOptions, ExportSource, stop_ids
from thinktune.runs import PEFT_CONFIG

# A saved PEFT LoRA tensor: `base_model.model.<module>.lora_A.weight` (older files: `.lora_A.<adapter>.weight`).
LORA_KEY = re.compile(r"(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight")


def check(model_type: str, options: ExportOptions) -> None:
    """The base must be a GGUF architecture we write; llama.cpp must be installed: it is the only program that
    applies the file, so it is what verifies it."""
    gguf_file.check(model_type, options)
    from thinktune.export.llama_cpp_check import check_installed

    check_installed()


def read_lora(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """(adapter_config.json, {module: {"A": (r, in), "B": (out, r)}}); whatever llama.cpp cannot apply is refused."""
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / PEFT_CONFIG
    if not config_path.is_file():
        raise UserError(f"{adapter_dir}: not a PEFT adapter directory (no {PEFT_CONFIG})")
    peft = json.loads(config_path.read_text())
    where = f"{config_path}"
    if str(peft.get("peft_type", "")).upper() != "LORA":
        raise UserError(f"{where}: peft_type {peft.get('peft_type')}; llama.cpp's LoRA files hold LoRA adapters only")
    if peft.get("use_dora"):
        raise UserError(f"{where}: use_dora: llama.cpp has no DoRA magnitudes; export --format gguf (merged) instead")
    if peft.get("modules_to_save"):
        raise UserError(
            f"{where}: modules_to_save {peft['modules_to_save']}: llama.cpp's LoRA files hold only A/B pairs; "
            "export --format gguf (merged) instead"
        )
    if peft.get("alpha_pattern"):
        raise UserError(f"{where}: alpha_pattern: one alpha per file in llama.cpp; export --format gguf instead")
    if peft.get("lora_bias"):
        raise UserError(f"{where}: lora_bias: llama.cpp's LoRA files have no bias; export --format gguf instead")
    weights = _load_weights(adapter_dir)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in weights.items():
        match = LORA_KEY.fullmatch(key)
        if match is None:
            raise UserError(f"{adapter_dir}: tensor '{key}' is not a LoRA A/B matrix; llama.cpp applies only those")
        pairs.setdefault(match["module"], {})[match["ab"]] = tensor.to(torch.float32).numpy()
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise UserError(f"{adapter_dir}: module '{module}' has lora_{''.join(pair)} without its pair")
    if not pairs:
        raise UserError(f"{adapter_dir}: the adapter holds no LoRA tensors")
    return peft, pairs


def _load_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    safetensors = adapter_dir / "adapter_model.safetensors"
    if safetensors.is_file():
        from safetensors.torch import load_file

        return load_file(str(safetensors))
    binary = adapter_dir / "adapter_model.bin"
    if binary.is_file():
        try:
            return torch.load(binary, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickled code is refused, never run
            raise UserError(f"{binary}: not a plain state dict ({type(e).__name__}); refusing to unpickle it") from None
    raise UserError(f"{adapter_dir}: no adapter_model.safetensors or adapter_model.bin")


def lora_tensors(adapter_dir: Path, config) -> tuple[float, list[tuple[str, np.ndarray]]]:
    """(adapter.lora.alpha, [(gguf name, data)]) for the adapter on a base with `config`.

    llama.cpp scales each pair by alpha / rank (rank read from the tensor). With one rank everywhere that is PEFT's
    scaling (lora_alpha / r, or / √r with use_rslora) for alpha = scaling · r; with several ranks (rank_pattern) the
    scaling is folded into B and alpha is 0, which llama.cpp reads as scale 1."""
    arch = gguf_file.gguf_arch(config.model_type)
    peft, pairs = read_lora(adapter_dir)
    names = gguf.get_tensor_name_map(arch.arch, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    ranks = {pair["A"].shape[0] for pair in pairs.values()}
    alpha = float(peft.get("lora_alpha", 8))

    def scaling(r: int) -> float:
        return alpha / math.sqrt(r) if peft.get("use_rslora") else alpha / r

    out = []
    for module, pair in pairs.items():
        mapped = names.get_name(module)
        if mapped is None or (mapped == "output" and tied):
            reason = "the output shares the embedding matrix" if mapped else f"no llama.cpp name for {module}"
            raise UserError(f"{adapter_dir}: LoRA on '{module}' cannot go in a llama.cpp LoRA file ({reason})")
        a, b = pair["A"], pair["B"]
        if arch.permute_qk and mapped.endswith((".attn_q", ".attn_k")):
            heads = config.num_attention_heads if mapped.endswith("attn_q") else config.num_key_value_heads
            b = gguf_file.permute_qk(b, heads)  # the base's rows are permuted; B holds the output rows
        if len(ranks) > 1:
            b = b * scaling(a.shape[0])
        out += [(f"{mapped}.weight.lora_a", a), (f"{mapped}.weight.lora_b", b)]
    r = next(iter(ranks))
    return (scaling(r) * r if len(ranks) == 1 else 0.0), out


def write_gguf_lora(adapter_dir: Path, config, path: Path, dtype: str = "f16", name: str = "lora") -> dict[str, Any]:
    """Write `adapter_dir` (PEFT LoRA) as a llama.cpp LoRA file for a base with `config`; f32 or f16 tensors."""
    qtype = {"f32": Q.F32, "f16": Q.F16}[dtype]
    alpha, tensors = lora_tensors(adapter_dir, config)
    arch = gguf_file.gguf_arch(config.model_type)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch.arch])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for tensor_name, data in tensors:
        writer.add_tensor(tensor_name, gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"lora_alpha": alpha, "lora_tensors": len(tensors)}


def export_gguf_lora(source: ExportSource, out: Path, options: ExportOptions) -> dict[str, Any]:
    from thinktune.export import llama_cpp_check

    check(source.model.config.model_type, options)
    config = source.model.config
    run_name = gguf_file._slug(gguf_file._artefact_name(source))
    base_name = gguf_file._slug(source.origin.path.name if source.origin.gguf_file is None else source.name_or_path)
    adapter_dtype = "f32" if options.gguf_type == "f32" else "f16"
    adapter_path = out / f"{run_name}-lora-{adapter_dtype}.gguf"
    written = write_gguf_lora(source.adapter, config, adapter_path, adapter_dtype, run_name)

    base_path = out / f"{base_name}-{options.gguf_type}.gguf"
    base_written = gguf_file.write_gguf(
        _base_weights(source.model), source.tokenizer, base_path, options.gguf_type, base_name
    )
    vocab = base_written.pop("vocab")

    stops = stop_ids(source.tokenizer, source.model)
    texts, ids = source.chat_texts(options.prompts), source.chat_ids(options.prompts)
    logits = [torch_logits(source.model, x) for x in ids]
    greedy = [torch_greedy(source.model, x, options.max_new_tokens, stops) for x in ids]
    seen = llama_cpp_check.compare(
        base_path, texts, ids, logits, greedy, options.max_new_tokens, stops, lora=adapter_path
    )
    return {
        "artefact": str(adapter_path),
        "base_gguf": str(base_path),
        "gguf_type": options.gguf_type,
        "adapter_dtype": adapter_dtype,
        "bytes": adapter_path.stat().st_size,
        "tokenizer_pre": vocab.pre,
        **written,
        "compared_with": "PEFT model (base + adapter, PyTorch float32) vs llama.cpp: base GGUF + the LoRA file",
        "llama_cpp": seen,
    }


def _base_weights(model) -> SimpleNamespace:
    """The base model's weights under their own names, from a PeftModel with the adapter still unmerged (the LoRA
    layers wrap each target as `<module>.base_layer`)."""
    base = model.get_base_model()
    state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if ".lora_" not in k}
    return SimpleNamespace(config=base.config, state_dict=lambda: state)
