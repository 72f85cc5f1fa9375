"""The served model: one base model plus any number of LoRA adapters, each addressed by a name.

Adapters are loaded once into a single PeftModel (`load_adapter(path, adapter_name=...)`); a batch switches to its
adapter with `set_adapter`, and base-model batches run inside `disable_adapter()`. Only the engine's worker thread
switches, so no two batches ever see each other's adapter.

A vision-language model also has its `vision` (models/vision.py): how requests' images become tokens and pixels.
With speculative decoding (`speculation`, models/speculative.py) the draft model, if any, runs without adapters: the
adapter's output stays exact, only fewer drafts may be accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from thinktune.errors import ConfigError, ModelNotFoundError
from thinktune.models import load_pretrained
from thinktune.models.speculative import Speculation, load_speculation
from thinktune.models.vision import Vision, load_vision
from thinktune.runs import load_trained


@dataclass
class ServedModel:
    model: PreTrainedModel  # a PeftModel when adapters are loaded
    tokenizer: PreTrainedTokenizerBase
    base_name: str
    adapters: dict[str, Path] = field(default_factory=dict)
    system_prompt: str | None = None  # added to chats that have none, as in training
    thinking: bool = True  # a request's thinking switch when it sets none (`data.thinking: off` → False)
    vision: Vision | None = None  # None: a text-only model, requests with images are refused
    speculation: Speculation | None = None  # speculative decoding: requests run one at a time

    @property
    def names(self) -> list[str]:
        return [self.base_name, *self.adapters]

    @property
    def max_context(self) -> int:
        config = self.model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config  # a VL model's is nested
        return int(getattr(text, "max_position_embeddings", None) or self.tokenizer.model_max_length)

    def adapter_for(self, name: str | None) -> str | None:
        """Adapter name for a request's `model` (None = the base model); KeyError if nothing is served under it."""
        if name is None or name == self.base_name:
            return None
        if name in self.adapters:
            return name
        raise KeyError(name)

    @contextmanager
    def use(self, adapter: str | None) -> Iterator[PreTrainedModel]:
        if not self.adapters:
            yield self.model
            return
        if adapter is None:
            with self.model.disable_adapter():
                yield self.model
            return
        self.model.set_adapter(adapter)
        yield self.model


def load_served_model(
    model_cfg,
    adapters: dict[str, str],
    base_name: str | None = None,
    system_prompt: str | None = None,
    trained_tensors: Path | None = None,
    draft_model: str | None = None,
    prompt_lookup: int | None = None,
) -> ServedModel:
    """Load the base model (`ModelConfig`), write a freeze/ESFT run's `trained_tensors` (its model/ folder) into it
    when given, and load every adapter; names must be unique. `draft_model` / `prompt_lookup`: speculative
    decoding (serve.draft_model / serve.prompt_lookup)."""
    model, tokenizer, source = load_pretrained(model_cfg)
    vision = load_vision(model, source.path)
    if vision is not None and (draft_model or prompt_lookup):
        raise ConfigError(
            f"serve.draft_model / serve.prompt_lookup: {model_cfg.name_or_path} is a vision-language model, and "
            "speculative decoding here serves text-only models"
        )
    speculation = load_speculation(draft_model, prompt_lookup, model_cfg, model, tokenizer)
    if trained_tensors is not None:
        model = load_trained(model, trained_tensors)
    model.eval()
    base_name = base_name or model_cfg.name_or_path
    paths = {}
    for name, path in adapters.items():
        if name == base_name:
            raise ConfigError(f"serve.adapters: adapter name '{name}' is the base model's name; pick another")
        p = Path(path).expanduser()
        if not (p / "adapter_config.json").is_file():
            raise ModelNotFoundError(
                f"serve.adapters.{name}: {p} is not a PEFT adapter directory (no adapter_config.json)"
            )
        paths[name] = p
    if paths:
        from peft import PeftModel

        first, *rest = paths.items()
        model = PeftModel.from_pretrained(model, first[1], adapter_name=first[0])
        for name, p in rest:
            model.load_adapter(p, adapter_name=name)
        model.eval()
    return ServedModel(model, tokenizer, base_name, paths, system_prompt, vision=vision, speculation=speculation)
