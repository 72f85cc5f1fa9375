"""A GGUF judged by llama.cpp itself (through llama-cpp-python), the program it is exported for.

    thinktune export --run-dir runs/quickstart --format gguf --gguf-type q8_0 --check-with llama-cpp

llama.cpp loads the file (refusing, like Ollama, a pre-tokenizer or tensor it does not know), tokenises each rendered
test prompt with its own tokenizer (compared id for id with the source tokenizer), computes the logits of the prompt
(teacher-forced top-1 agreement and max |Δlogit| against the merged PyTorch model) and continues it greedily.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thinktune.errors import EnvironmentProblem, UserError
from thinktune.export.parity import greedy_agreement, max_abs_diff, top1_agreement


def check_installed() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise EnvironmentProblem(
            "--check-with llama-cpp needs llama-cpp-python: pip install 'thinktune[llama]' "
            "(compiles llama.cpp, ~10 min)"
        ) from None


@contextlib.contextmanager
def load(path: Path, n_ctx: int, lora: Path | None = None) -> Iterator[Any]:
    """The GGUF in llama.cpp on the CPU (with the LoRA file `lora` applied); a file llama.cpp refuses is one error
    line."""
    check_installed()
    import llama_cpp

    threads = max(1, min(8, os.cpu_count() or 1))
    try:
        llm = llama_cpp.Llama(
            str(path),
            n_ctx=n_ctx,
            logits_all=True,
            verbose=False,
            n_threads=threads,
            n_gpu_layers=0,
            seed=0,
            lora_path=str(lora) if lora else None,
        )
    except (ValueError, RuntimeError) as e:  # "Failed to load model from file: …", "Failed to load LoRA adapter…"
        refused = lora if lora and "lora" in str(e).lower() else path
        raise UserError(f"{refused}: llama.cpp refuses the file ({e})") from None
    try:
        yield llm
    finally:
        llm.close()


def prompt_logits(llm: Any, ids: Sequence[int]) -> np.ndarray:
    """Logits (seq, vocab) for every position of `ids`."""
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def greedy(llm: Any, ids: Sequence[int], n: int, stops: Sequence[int] = ()) -> list[int]:
    """Greedy continuation (argmax of llama.cpp's logits), stopping after a stop token or `n` tokens."""
    llm.reset()
    llm.eval(list(ids))
    out: list[int] = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        if token in stops:
            break
        llm.eval([token])
    return out


def tokenize(llm: Any, text: str) -> list[int]:
    """llama.cpp's tokenisation of already-rendered chat text (special tokens parsed, no BOS added)."""
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def compare(
    path: Path,
    texts: Sequence[str],
    ids: Sequence[list[int]],
    reference_logits: Sequence[np.ndarray],
    reference_greedy: Sequence[list[int]],
    max_new_tokens: int,
    stops: Sequence[int],
    lora: Path | None = None,
) -> dict[str, Any]:
    """llama.cpp against the source: tokenizer, logits and greedy output on the same prompts (with the LoRA file
    `lora` applied to the GGUF when given)."""
    import llama_cpp

    n_ctx = max(len(x) for x in ids) + max_new_tokens + 8
    with load(path, n_ctx, lora) as llm:
        tokens = [tokenize(llm, t) for t in texts]
        logits = [prompt_logits(llm, x) for x in ids]
        continued = [greedy(llm, x, max_new_tokens, stops) for x in ids]
    return {
        "runtime": f"llama-cpp-python {llama_cpp.__version__}",
        "tokenizer_identical": [list(t) for t in tokens] == [list(x) for x in ids],
        "max_abs_logit_diff": max_abs_diff(reference_logits, logits),
        "top1_agreement": top1_agreement(reference_logits, logits),
        "greedy": greedy_agreement(list(reference_greedy), continued),
    }
