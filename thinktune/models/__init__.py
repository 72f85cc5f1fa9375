"""Resolve and load models and tokenizers; architecture facts live in `registry.py`."""

from thinktune.models.loading import load_model, load_pretrained, load_tokenizer, resolve_model

__all__ = ["load_model", "load_pretrained", "load_tokenizer", "resolve_model"]
