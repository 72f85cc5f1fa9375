"""`--backend llamacpp`: the same API served from a GGUF by llama.cpp (llama-cpp-python) on the CPU.

    thinktune serve --backend llamacpp --model exports/gguf/model.gguf
    thinktune serve --backend llamacpp --run-dir runs/quickstart    # the run's GGUF export (runs/<name>/export/gguf)
    thinktune serve --backend llamacpp --model base.gguf --adapter quickstart=runs/quickstart/adapter

Only the engine changes: the app (schemas, reasoning split, stop strings, queue and 429, timeouts, API key, /metrics)
is the transformers backend's. Prompts are rendered and tokenised by the HF tokenizer exactly as there, and the ids go
to llama.cpp as they are; each generated token runs through the same `RowState` (detokenising, stop strings, end
of turn, max_tokens).

Concurrency is llama.cpp's own (what llama-server does): one context holds `serve.max_batch_size` sequences (slots),
each with its own part of the KV cache; every step is one `llama_decode` of a batch that carries the next token of
each decoding slot and the prompt tokens of newly admitted ones, so a request joins at the next step (continuous
batching) instead of waiting for a running batch to end. The high-level `Llama` object runs one sequence at a time
and is not thread-safe, so the low-level API is used here.

Prompt prefixes are reused as llama-server's `cache_prompt` does: a sequence keeps the KV cache its last request left,
a new request goes to the free sequence that shares the longest prefix with its prompt (same adapter), and only the
rest of the prompt is decoded — the chat template's header and system prompt, identical across requests, are
computed once per slot instead of once per request.

Adapters (`serve.adapters`, `--adapter name=DIR`) are LoRA files llama.cpp applies to the base at run time: a PEFT
LoRA adapter is converted at start-up (export/gguf_lora.py, float32), a `.gguf` LoRA file is taken as it is. A
request's `model` picks one, as with the transformers backend; sequences of different adapters share the context
and its slots, and each step decodes one batch per adapter in use with that adapter set on the context.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from thinktune.errors import EnvironmentProblem, UserError
from thinktune.eval.generate import stop_token_ids
from thinktune.serve.adapters import ServedModel
from thinktune.serve.detokenize import IncrementalDetokenizer
from thinktune.serve.engine import Engine, GenerationRequest, RowState
from thinktune.serve.sampling import SamplingParams

log = logging.getLogger("thinktune.serve")

PREFILL_CHUNK = 512  # prompt tokens per llama_decode (llama.cpp's default n_batch)
SHARE_AT_LEAST = 16  # prompt tokens another sequence must add over a slot's own cache to be copied from


def require_llama_cpp(setting: str = "--backend llamacpp") -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise EnvironmentProblem(
            f"{setting} needs llama-cpp-python: pip install 'thinktune[llama]' (compiles llama.cpp, ~10 min)"
        )


def find_gguf(model: str, gguf_file: str | None = None, run_dir: Path | None = None) -> Path | None:
    """The GGUF to serve, looking only on this machine: a run's export (export/gguf/ or export/), a .gguf model, a
    directory's `gguf_file` or single .gguf, or the bundled SmolLM2 (shipped as a GGUF). None when there is none."""
    from thinktune.models.loading import BUNDLED, bundled_gguf
    from thinktune.runs import EXPORT

    if run_dir is not None:
        found = sorted((run_dir / EXPORT / "gguf").glob("*.gguf")) or sorted((run_dir / EXPORT).glob("*.gguf"))
        return found[0] if len(found) == 1 else None
    if model in BUNDLED:
        return bundled_gguf(model)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        found = [path / gguf_file] if gguf_file else sorted(path.glob("*.gguf"))
        return found[0] if len(found) == 1 and found[0].is_file() else None
    return None


def choose_backend(gguf: Path | None) -> tuple[str, str]:
    """`--backend auto`: (backend, the reason in a few words)."""
    import torch

    if torch.cuda.is_available():
        return "transformers", "a CUDA GPU is visible"
    if gguf is None:
        return "transformers", "CPU only, but no GGUF at hand (thinktune export --format gguf makes one)"
    if importlib.util.find_spec("llama_cpp") is None:
        return "transformers", f"CPU only with {gguf.name}, but llama-cpp-python is not installed"
    return "llamacpp", f"CPU only, {gguf} at hand and llama-cpp-python installed"


def load_served_gguf(cfg, gguf: Path | None = None, served_model_name: str | None = None) -> ServedGguf:
    """`cfg` (RunConfig) served from `gguf` (default: the one `find_gguf` sees for model.name_or_path); the tokenizer
    and chat template are the model's HF ones, as the transformers backend renders them."""
    from thinktune.models.loading import load_tokenizer, resolve_model

    gguf = gguf or find_gguf(cfg.model.name_or_path, cfg.model.gguf_file)
    if gguf is None:
        raise UserError(
            f"--backend llamacpp serves a GGUF and model {cfg.model.name_or_path} has none here: pass --model "
            "FILE.gguf, or export one first (thinktune export --run-dir R --format gguf) and serve --run-dir R"
        )

    if not gguf.is_file():
        raise UserError(f"{gguf}: GGUF file not found")
    source = resolve_model(cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.revision)
    tokenizer = load_tokenizer(source, cfg.model.chat_template)
    served = ServedGguf(gguf, tokenizer, served_model_name or cfg.model.name_or_path, cfg.serve.llamacpp_context)
    served.system_prompt = cfg.data.system_prompt
    served.thinking = cfg.data.thinking != "off"  # as the run was trained
    served.adapters = lora_files(cfg, served.workdir)
    return served


def lora_files(cfg, into: Path) -> dict[str, Path]:
    """serve.adapters as llama.cpp LoRA files: a `.gguf` LoRA file as it is; a PEFT LoRA adapter folder (or a run
    that has one) converted into `into` (float32, export/gguf_lora.py) for the base model's architecture."""
    from thinktune.export.gguf_lora import write_gguf_lora
    from thinktune.export.source import base_config
    from thinktune.runs import ADAPTER, PEFT_CONFIG

    files, config = {}, None
    for name, given in cfg.serve.adapters.items():
        path = Path(given).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            files[name] = path
            continue
        if not path.is_dir():
            raise UserError(f"serve.adapters.{name}: {given} is neither a LoRA .gguf file nor an adapter directory")
        folder = path / ADAPTER if (path / ADAPTER / PEFT_CONFIG).is_file() else path
        config = config or base_config(cfg.model)
        files[name] = into / f"{len(files)}-lora-f32.gguf"
        write_gguf_lora(folder, config, files[name], "f32", name)
        log.info("adapter %s: %s converted to %s", name, folder, files[name])
    return files


class ServedGguf(ServedModel):
    """A GGUF served by llama.cpp: the HF tokenizer (for rendering and detokenising) without a torch model;
    `adapters` are llama.cpp LoRA files (converted ones live in `workdir` while the server runs)."""

    def __init__(self, gguf: Path, tokenizer, base_name: str, context: int, system_prompt: str | None = None):
        super().__init__(None, tokenizer, base_name, {}, system_prompt)
        self.gguf, self.context = gguf, context
        self._workdir = tempfile.TemporaryDirectory(prefix="thinktune-lora-")
        self.workdir = Path(self._workdir.name)

    @property
    def max_context(self) -> int:
        return self.context


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator, seen: list[int], stops: list[int]):
    """The next token for one row, with the transformers backend's rules (sampling.py): repetition penalty, end
    tokens masked for ignore_eos, then greedy, or temperature → top-k → top-p → a draw from the row's generator."""
    logits = logits.astype(np.float64)
    if params.repetition_penalty != 1.0 and seen:
        ids = np.unique(np.asarray(seen))
        chosen = logits[ids]
        logits[ids] = np.where(chosen < 0, chosen * params.repetition_penalty, chosen / params.repetition_penalty)
    if params.ignore_eos and stops:
        logits[stops] = -np.inf
    if params.greedy:
        return int(np.argmax(logits))
    logits = logits / params.temperature
    order = np.argsort(-logits, kind="stable")
    if params.top_k > 0:
        order = order[: params.top_k]
    top = logits[order]
    probs = np.exp(top - top[0])
    probs /= probs.sum()
    if params.top_p < 1.0:
        before = np.cumsum(probs) - probs  # mass ranked above; the first token always stays
        keep = before < params.top_p
        order, probs = order[keep], probs[keep] / probs[keep].sum()
    return int(order[rng.choice(len(order), p=probs)])


@dataclass(eq=False)
class Slot:
    """One sequence of the llama.cpp context: the request in it, the prompt tokens not yet decoded, its position."""

    seq: int
    row: RowState
    pending: list[int]
    rng: np.random.Generator
    seen: list[int] = field(default_factory=list)  # prompt + generated (repetition penalty)
    adapter: str | None = None  # the LoRA applied to this sequence (None: the base)
    pos: int = 0
    donor: tuple[Slot, int] | None = None  # waiting to copy the first n prompt tokens' KV from this running slot
    started: float = field(default_factory=time.monotonic)


class LlamaCppEngine(Engine):
    """`Engine`'s queue, limits and events, with llama.cpp's multi-sequence decoding behind them."""

    def __init__(
        self,
        served: ServedGguf,
        max_batch_size: int = 8,
        max_queue: int = 64,
        threads: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ):
        require_llama_cpp()
        import llama_cpp

        self.lib = llama_cpp
        self.slots_n = max_batch_size
        threads = threads or os.cpu_count() or 1
        llama_cpp.llama_log_set(_quiet, ctypes.c_void_p())
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(str(served.gguf).encode(), mparams)
        if not self.model:
            raise UserError(f"{served.gguf}: llama.cpp refuses the file (see llama.cpp's log with --log-level debug)")
        served.context = min(served.context, llama_cpp.llama_model_n_ctx_train(self.model))
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_seq_max = max_batch_size
        cparams.n_ctx = served.context * max_batch_size  # each sequence gets its own share (kv_unified off)
        cparams.kv_unified = False
        cparams.n_batch = cparams.n_ubatch = PREFILL_CHUNK + max_batch_size
        cparams.n_threads = cparams.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise UserError(f"{served.gguf}: llama.cpp could not make a context of {cparams.n_ctx} tokens")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        eog = [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        # the HF tokenizer's end tokens (a GGUF has no generation_config), and llama.cpp's end-of-generation tokens
        stops = sorted(set(stop_token_ids(served.tokenizer, SimpleNamespace(generation_config=None))) | set(eog))
        self.batch = llama_cpp.llama_batch_init(cparams.n_batch, 0, 1)
        self.loras = {}
        for name, path in served.adapters.items():
            self.loras[name] = llama_cpp.llama_adapter_lora_init(self.model, str(path).encode())
            if not self.loras[name]:
                raise UserError(f"{path}: llama.cpp refuses adapter '{name}' as a LoRA of {served.gguf.name}")
        self.applied: str | None = None
        # per sequence: (adapter, the tokens its KV cache holds) left by its last request, reused by the next
        self.cached: list[tuple[str | None, list[int]]] = [(None, [])] * max_batch_size
        self.prompt_tokens_reused = 0
        super().__init__(served, max_batch_size, max_queue, on_batch=on_batch, stop_ids=stops)
        self.slots: list[Slot | None] = [None] * max_batch_size

    def close(self) -> None:
        if self.ctx:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.lib.llama_model_free(self.model)
            self.ctx = self.model = None

    def retry_after(self) -> int:
        waves = math.ceil((len(self._queue) + 1) / self.max_batch_size)
        return max(1, math.ceil(waves * self.batch_seconds))

    # -- the worker ------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._admit():
                self._step()
        finally:
            for slot in self.active:
                slot.row.fail("the server stopped")
            self.close()

    @property
    def active(self) -> list[Slot]:
        return [s for s in self.slots if s is not None]

    def _admit(self) -> bool:
        """Move waiting requests into free slots; wait while there is nothing to do. False: closing and done."""
        with self._cond:
            while True:
                self._drop_abandoned()
                if self._queue and None in self.slots:
                    break
                if self.active:
                    return True
                if self._closing:
                    return False
                self._cond.wait()
            while self._queue and None in self.slots:
                request = self._queue.popleft()
                seq = self._free_seq(request)
                self.slots[seq] = self._slot(seq, request)
        self.running = len(self.active)
        if self.on_batch:
            self.on_batch(self.running)
        return True

    def _reusable(self, seq: int, request: GenerationRequest) -> int:
        """How many leading prompt tokens sequence `seq` already holds in the KV cache for this request's adapter
        (at least one prompt token is always decoded again: it gives the first logits)."""
        adapter, cached = self.cached[seq]
        return _shared(cached, request.prompt_ids) if adapter == request.adapter else 0

    def _donor(self, seq: int, request: GenerationRequest, keep: int) -> tuple[int, Slot | None, int] | None:
        """Another sequence holding (a free one's cache) or about to hold (a running slot's prompt) a longer prefix
        of this prompt than `keep`: (its seq, the running slot or None, the prefix length)."""
        best, most = None, keep + SHARE_AT_LEAST - 1
        for other in range(self.slots_n):
            slot = self.slots[other]
            if other == seq or (slot is not None and slot.donor is not None):
                continue
            adapter, tokens = (slot.adapter, slot.seen) if slot is not None else self.cached[other]
            n = _shared(tokens, request.prompt_ids) if adapter == request.adapter else 0
            if n > most:
                best, most = (other, slot, n), n
        return best

    def _copy(self, slot: Slot, donor_seq: int, n: int) -> None:
        """Start `slot` from the donor sequence's first `n` KV entries (the whole buffer is copied at the next
        decode, before it writes anything; the entries past `n` are dropped)."""
        self.lib.llama_memory_seq_cp(self.memory, donor_seq, slot.seq, -1, -1)
        self.lib.llama_memory_seq_rm(self.memory, slot.seq, n, -1)
        self.prompt_tokens_reused += n - slot.pos
        slot.pending, slot.pos, slot.donor = slot.seen[n : len(slot.row.request.prompt_ids)], n, None

    def _free_seq(self, request: GenerationRequest) -> int:
        """The free sequence whose cache shares the longest prefix with the request's prompt."""
        free = [seq for seq, slot in enumerate(self.slots) if slot is None]
        return max(free, key=lambda seq: self._reusable(seq, request))

    def _slot(self, seq: int, request: GenerationRequest) -> Slot:
        keep = self._reusable(seq, request)
        if not self.lib.llama_memory_seq_rm(self.memory, seq, keep, -1):  # keep the shared prefix's KV entries
            keep = 0
            self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)
        self.cached[seq] = (request.adapter, [])
        self.prompt_tokens_reused += keep
        row = RowState(request, IncrementalDetokenizer(self.tokenizer), self.stop_ids)
        seed = request.params.seed if request.params.seed is not None else None
        rng = np.random.default_rng(seed)
        prompt = list(request.prompt_ids)
        slot = Slot(seq, row, prompt[keep:], rng, prompt, adapter=request.adapter, pos=keep)
        donor = self._donor(seq, request, keep)
        if donor is not None and donor[1] is None:  # a free sequence's cache: copy now
            self._copy(slot, donor[0], donor[2])
        elif donor is not None:  # a running slot: once it has decoded that far
            slot.donor = (donor[1], donor[2])
        return slot

    def _step(self) -> None:
        """One llama_decode per adapter in use (one in all without adapters)."""
        for slot in self.active:
            if slot.row.request.abandoned or slot.pos >= self.served.max_context:
                self._release(slot)
            elif slot.donor is not None:
                donor, n = slot.donor
                if self.slots[donor.seq] is not donor:  # gone before it got there: decode the prompt itself
                    slot.donor = None
                elif donor.pos >= n:
                    self._copy(slot, donor.seq, n)
        groups: dict[str | None, list[Slot]] = {}
        for slot in self.active:
            groups.setdefault(slot.adapter, []).append(slot)
        budget = PREFILL_CHUNK
        for adapter, slots in groups.items():
            self._apply(adapter)
            budget = self._decode(slots, budget)

    def _apply(self, adapter: str | None) -> None:
        """Put `adapter`'s LoRA (none: the base) on the context; llama.cpp applies it in the next decodes."""
        if adapter == self.applied:
            return
        lib = self.lib
        if adapter is None:
            lib.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            loras = (lib.llama_adapter_lora_p_ctypes * 1)(self.loras[adapter])
            lib.llama_set_adapters_lora(self.ctx, loras, 1, (ctypes.c_float * 1)(1.0))
        self.applied = adapter

    def _decode(self, slots: list[Slot], budget: int) -> int:
        """One llama_decode for `slots`: the last token of every decoding slot, then prompt tokens of new slots up to
        `budget`; returns the prompt budget left."""
        batch, n, outputs = self.batch, 0, []
        for slot in slots:
            if not slot.pending:
                n = self._put(n, slot, slot.seen[-1], True)
                outputs.append((slot, n - 1))
        for slot in slots:
            if slot.pending and budget > 0 and slot.donor is None:
                take, slot.pending = slot.pending[:budget], slot.pending[budget:]
                budget -= len(take)
                for i, token in enumerate(take):
                    n = self._put(n, slot, token, not slot.pending and i == len(take) - 1)
                if not slot.pending:
                    outputs.append((slot, n - 1))
        if n == 0:
            return budget
        batch.n_tokens = n
        started = time.monotonic()
        try:
            if self.lib.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
        except Exception:
            log.exception("llama.cpp decoding failed for %d sequences", len(slots))
            for slot in slots:
                slot.row.fail("generation failed; see the server log")
                self._release(slot, decoded=False)
            return budget
        for slot, index in outputs:
            pointer = self.lib.llama_get_logits_ith(self.ctx, index)
            logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
            token = sample(logits, slot.row.params, slot.rng, slot.seen, self.stop_ids)
            slot.row.step(token)
            slot.seen.append(token)
            if slot.row.finished:
                self._release(slot)
                self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * (time.monotonic() - slot.started)
        log.debug("decoded %d tokens in %.3f s", n, time.monotonic() - started)
        return budget

    def _put(self, n: int, slot: Slot, token: int, logits: bool) -> int:
        b = self.batch
        b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = token, slot.pos, 1, logits
        b.seq_id[n][0] = slot.seq
        slot.pos += 1
        return n + 1

    def _release(self, slot: Slot, decoded: bool = True) -> None:
        if not slot.row.finished and not slot.row.request.abandoned:
            slot.row.finish("length")  # ran out of its slot's context (the app keeps requests within it)
        if decoded:  # the KV cache holds the first `pos` tokens of prompt + answer
            self.cached[slot.seq] = (slot.adapter, slot.seen[: slot.pos])
        self.slots[slot.seq] = None
        self.running = len(self.active)


def _shared(tokens: list[int], prompt: list[int]) -> int:
    """Length of the common prefix, short of the prompt's last token (decoded again for the first logits)."""
    n, limit = 0, min(len(tokens), len(prompt) - 1)
    while n < limit and tokens[n] == prompt[n]:
        n += 1
    return n


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _quiet(level: int, text: bytes, user_data) -> None:
    """llama.cpp's log → ours at debug level (it prints every tensor while loading)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug(text.decode(errors="replace").rstrip())
