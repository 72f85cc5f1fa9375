"""PyTorch pickle weights (`.pt`, `.pth`, `.bin`): read with `torch.load(weights_only=True)`, never run as code.

Two shapes are loaded: a Hugging Face directory whose weights are `pytorch_model.bin` (or shards listed in
`pytorch_model.bin.index.json`) instead of safetensors, and a single state-dict file named as `model.name_or_path`
with `config.json` and the tokenizer files in the same directory. A file that needs pickled code to load (a whole
pickled `nn.Module`, an object of a custom class, any `__reduce__` payload) is refused in one line naming the file,
before anything in it runs. Key prefixes added by wrappers (`module.` from DDP, `_orig_mod.` from torch.compile, a
`model.` from a training wrapper) are stripped when that makes the keys fit the model; what still does not fit
(missing, unexpected or wrongly shaped tensors) is a one-line error listing a few keys, not a silently
re-initialised layer.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path

import torch

from thinktune.errors import WeightsError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
BIN_NAME = "pytorch_model.bin"
BIN_INDEX_NAME = "pytorch_model.bin.index.json"
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
NESTED_KEYS = ("state_dict", "model", "module")  # {"state_dict": {...}, "optimizer": {...}} training checkpoints
SHOWN = 3  # keys named in an error


def pickle_weight_files(path: Path, weights_file: str | None = None) -> list[Path]:
    """The torch pickle files a model source loads from: the named file, else a directory's `pytorch_model.bin`
    (or its shards) when it has no safetensors; [] when transformers should load the directory itself."""
    if weights_file:
        return [path / weights_file]
    if any(path.glob("*.safetensors")):
        return []
    index = path / BIN_INDEX_NAME
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as e:
            raise WeightsError(f"{index}: not a weight index (no 'weight_map' of key → file): {e}") from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise WeightsError(f"{index}: shard file(s) missing: {', '.join(missing[:SHOWN])}")
        return [path / s for s in shards]
    return [path / BIN_NAME] if (path / BIN_NAME).is_file() else []


def read_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    """Tensors by name from torch pickle files, loaded with `weights_only=True` (no pickled code runs)."""
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(_read_one(file))
    return state


def _read_one(file: Path) -> dict[str, torch.Tensor]:
    mmap = zipfile.is_zipfile(file)  # mmap needs torch's zip format; old-style pickles load into memory
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))  # torch names the first class/function the file would call
        if found:
            raise WeightsError(
                f"{file}: refused, it needs pickled code to load ({found.group(1)}); thinktune reads .pt/.bin "
                "weights with torch.load(weights_only=True) only: save a state dict "
                "(torch.save(model.state_dict(), path)) or safetensors"
            ) from None
        reason = re.search(r"WeightsUnpickler error: ([^\n]*)", str(e))
        raise WeightsError(f"{file}: cannot be read as PyTorch weights: {reason.group(1) if reason else e}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{file}: cannot be read as PyTorch weights: {first}") from None
    for key in NESTED_KEYS:
        if isinstance(obj, dict) and not _has_tensors(obj) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{file}: not a state dict (a dict of tensor name → tensor), got {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{file}: not a state dict of tensors; non-tensor entries: {', '.join(bad[:SHOWN])}")
    return obj


def _has_tensors(obj: dict) -> bool:
    return any(isinstance(v, torch.Tensor) for v in obj.values())


def strip_wrapper_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Peel prefixes every key shares (`module.`, `_orig_mod.`, `model.`, in any nesting) and keep the peeling whose
    keys fit `expected` best, the least peeled on a tie (a causal LM's own keys start with `model.` too)."""
    best, fits = state, len(expected & state.keys())
    while prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None):
        state = {k[len(prefix) :]: v for k, v in state.items()}
        if len(expected & state.keys()) > fits:
            best, fits = state, len(expected & state.keys())
    return best


def check_keys(
    state: dict[str, torch.Tensor], skeleton: torch.nn.Module, base_prefix: str, where: str
) -> dict[str, torch.Tensor]:
    """Keys and shapes of `state` against the model built from the config (on the meta device); one-line error
    naming a few keys that do not fit. Returns `state` with the base-model prefix added where it was missing."""
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    state = strip_wrapper_prefixes(state, set(expected))
    if base_prefix and not (state.keys() & expected.keys()):
        state = {f"{base_prefix}.{k}": v for k, v in state.items()}  # saved from the base model, without the head
    tied = _tied_aliases(skeleton)
    missing = [k for k in expected if k not in state and not (tied.get(k, set()) & state.keys())]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(v.shape)} vs {expected[k]}" for k, v in state.items() if expected.get(k, v.shape) != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({', '.join(missing[:SHOWN])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:SHOWN])})")
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape ({', '.join(wrong[:SHOWN])})")
    if problems:
        raise WeightsError(f"{where}: weights do not fit the model in config.json: {'; '.join(problems)}")
    return state


def _tied_aliases(model: torch.nn.Module) -> dict[str, set[str]]:
    """Parameter name → the other names of the same tensor (tied embeddings may be saved once)."""
    names: dict[int, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), set()).add(name)
    return {n: group - {n} for group in names.values() for n in group}
