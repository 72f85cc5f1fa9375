"""Speculative decoding through transformers' assisted generation: something cheap drafts tokens, the served model
checks them all in one forward pass and keeps the longest prefix it agrees with, plus one token of its own.

Two drafters, chosen by `serve.draft_model` / `serve.prompt_lookup` (`thinktune serve --draft-model REF`,
`--prompt-lookup N`, the same flags on `thinktune chat`):
- a draft model (`assistant_model=`; Leviathan et al. 2023, "Fast Inference from Transformers via Speculative
  Decoding"): it must share the served model's tokenizer vocabulary, checked here when it loads;
- prompt lookup (`prompt_lookup_num_tokens=`; Saxena 2023, github.com/apoorvumang/prompt-lookup-decoding): up to N
  tokens copied from where the sequence's last tokens appeared before.

Greedy output is what the served model alone would write (each kept token is the served model's own argmax); with
sampling, transformers samples the served model's distribution (speculative sampling for a draft model, token
matching for prompt lookup). Assisted generation takes one sequence per `generate()` call.

`DraftCounter` measures the acceptance rate: accepted draft tokens / drafted tokens.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from thinktune.errors import ConfigError
from thinktune.models.loading import load_model, load_tokenizer, resolve_model


@dataclass(frozen=True)
class Speculation:
    """How tokens are drafted: a draft model (`draft`) or prompt lookup (`prompt_lookup` tokens)."""

    draft: PreTrainedModel | None = None
    draft_name: str | None = None
    prompt_lookup: int | None = None

    def generate_kwargs(self) -> dict[str, Any]:
        if self.draft is not None:
            return {"assistant_model": self.draft}
        return {"prompt_lookup_num_tokens": self.prompt_lookup}

    @property
    def description(self) -> str:
        if self.draft is not None:
            return f"draft model {self.draft_name}"
        return f"prompt lookup ({self.prompt_lookup} tokens)"


def load_speculation(
    draft_model: str | None,
    prompt_lookup: int | None,
    model_cfg,
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
) -> Speculation | None:
    """The Speculation for `serve.draft_model` / `serve.prompt_lookup` (None when neither is set). A draft model
    loads like the served model (`model_cfg`'s dtype, attention, remote-code setting), onto its device, and must
    have its tokenizer vocabulary and output size."""
    if draft_model and prompt_lookup:
        raise ConfigError("serve.draft_model and serve.prompt_lookup are two ways to draft tokens: set one")
    if prompt_lookup:
        return Speculation(prompt_lookup=prompt_lookup)
    if not draft_model:
        return None
    source = resolve_model(draft_model)
    # the draft's chat template is never used; borrowing the target's keeps a template-less draft loadable
    draft_tokenizer = load_tokenizer(source, tokenizer.chat_template)
    check_same_vocabulary(draft_model, draft_tokenizer, model_cfg.name_or_path, tokenizer)
    draft = load_model(source, model_cfg.dtype, model_cfg.trust_remote_code, None, model_cfg.attn_implementation)
    draft_size = draft.config.get_text_config().vocab_size
    target_size = target.config.get_text_config().vocab_size
    if draft_size != target_size:
        raise ConfigError(
            f"serve.draft_model: {draft_model} scores {draft_size} tokens and {model_cfg.name_or_path} {target_size}: "
            "a draft model must have the served model's vocabulary size"
        )
    return Speculation(draft=draft.to(target.device).eval(), draft_name=draft_model)


def check_same_vocabulary(
    draft_name: str, draft: PreTrainedTokenizerBase, target_name: str, target: PreTrainedTokenizerBase
) -> None:
    """One line when the draft's tokenizer maps any token to another id than the target's."""
    theirs, ours = draft.get_vocab(), target.get_vocab()
    if theirs == ours:
        return
    differing = sorted(set(theirs.items()) ^ set(ours.items()), key=lambda kv: kv[1])
    token, _ = differing[0]

    def id_in(vocab: dict[str, int]) -> str:
        return f"id {vocab[token]}" if token in vocab else "absent"

    where = f"{token!r} is {id_in(theirs)} there and {id_in(ours)} here"
    raise ConfigError(
        f"serve.draft_model: {draft_name} has another tokenizer vocabulary than {target_name} ({len(theirs)} vs "
        f"{len(ours)} tokens; {where}): a draft model must share the served model's tokenizer"
    )


class DraftCounter:
    """Drafted and accepted tokens of assisted `generate()` calls (one sequence each), read off the served model's
    forward passes: the first one takes the prompt plus the first draft, every later one the last kept token plus
    the next draft, and each pass keeps the accepted draft tokens plus one token of the served model's own.

        counter = DraftCounter()
        with counter.watch(model, prompt_len) as done:
            out = model.generate(..., assistant_model=draft)
            done(out.shape[1] - prompt_len)

    A draft cut short at the end (the end-of-turn token or max_new_tokens inside the accepted tokens) counts the last
    pass's token as its own rather than accepted: at most one token per call is counted as rejected."""

    def __init__(self) -> None:
        self.drafted = 0
        self.accepted = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @contextmanager
    def watch(self, model: torch.nn.Module, prompt_len: int):
        module = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel's inner LM
        fed: list[int] = []

        def record(_module, args, kwargs) -> None:
            ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else (args[0] if args else None)
            if ids is not None:
                fed.append(ids.shape[1])

        def done(generated: int) -> None:
            if fed:
                drafted = sum(fed) - prompt_len - (len(fed) - 1)
                self.drafted += max(0, drafted)
                self.accepted += min(max(0, generated - len(fed)), max(0, drafted))

        handle = module.register_forward_pre_hook(record, with_kwargs=True)
        try:
            yield done
        finally:
            handle.remove()
