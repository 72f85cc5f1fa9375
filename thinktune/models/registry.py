"""What we know about each architecture, by `config.model_type`: default targets per method and the MoE layout.

Add an architecture = one entry. Unknown architectures fall back to PEFT's `all-linear` for LoRA and to PEFT's own
defaults for IA³; MoE-only methods (ESFT, expert LoRA) then say the architecture is not supported.

Names are module names inside one decoder layer (`model.layers.N.<attention>.q_proj`, `model.layers.N.<mlp>.gate`).
In transformers 5 routed experts are fused 3-D parameters: `<mlp>.experts.gate_up_proj` (E, 2I, H) and
`<mlp>.experts.down_proj` (E, H, I); the router `<mlp>.gate` returns (logits, top-k weights, top-k indices).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from thinktune.config import MethodConfig

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
MLA = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")  # DeepSeek latent attention


@dataclass(frozen=True)
class ArchFacts:
    lora_targets: tuple[str, ...]
    moe: bool = False
    attention: str = "self_attn"
    mlp: str = "mlp"
    mlp_linears: tuple[str, ...] = MLP  # dense MLP (and shared-expert) Linear names
    router: str | None = None  # MoE router module inside the MLP block
    experts: str | None = None  # fused routed-experts module inside the MLP block
    expert_params: tuple[str, ...] = ()  # its fused 3-D parameters
    shared_experts: str | None = None  # always-on experts (plain MLP) inside the MLP block
    ia3_targets: tuple[str, ...] = ("k_proj", "v_proj", "down_proj")
    ia3_feedforward: tuple[str, ...] = ("down_proj",)
    prefix_tuning: bool = True  # PEFT prefix tuning needs a standard (k, v) cache per head
    towers: tuple[str, ...] = ()  # vision-language models: modules LoRA leaves alone (the vision encoder)
    projector: str | None = None  # inside the tower: what maps vision features into the language model
    position_ids: bool = True  # packing passes 1-D position ids (multimodal RoPE models compute their own)
    image_text: str | None = None  # what an <image> placeholder becomes in the chat template (models/vision.py)


def _moe(**kw) -> dict:
    return dict(moe=True, router="gate", experts="experts", expert_params=("gate_up_proj", "down_proj"), **kw)


ARCHS: dict[str, ArchFacts] = {
    "llama": ArchFacts(ATTN + MLP),
    "mistral": ArchFacts(ATTN + MLP),
    "qwen2": ArchFacts(ATTN + MLP),
    "qwen3": ArchFacts(ATTN + MLP),
    # PEFT maps MLP names (gate/up/down_proj) onto fused experts as target_parameters, which rules out LoRA dropout;
    # so the MoE default is attention only and `method.expert_lora` adds the experts explicitly.
    "qwen3_moe": ArchFacts(ATTN, ia3_targets=("k_proj", "v_proj"), ia3_feedforward=(), **_moe()),
    # Vision-language models: LoRA on the language model; the vision tower (`visual`, whose blocks also have
    # q/k/v-like and gate/up/down_proj Linears) stays frozen; M-RoPE position ids come from the model itself.
    **{
        t: ArchFacts(
            ATTN + MLP,
            towers=("visual",),
            projector="merger",
            position_ids=False,
            prefix_tuning=False,
            image_text="<|vision_start|><|image_pad|><|vision_end|>",
        )
        for t in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
    },
    # MLA caches a compressed latent, not per-head (k, v): PEFT prefix tuning cannot extend it.
    "deepseek_v3": ArchFacts(
        MLA, ia3_targets=("kv_b_proj", "down_proj"), prefix_tuning=False, **_moe(shared_experts="shared_experts")
    ),
}


def arch_facts(model_type: str) -> ArchFacts | None:
    return ARCHS.get(model_type)


LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


def layer_index(param_name: str) -> int | None:
    """Decoder layer number in a parameter name (`model.layers.3.mlp...` → 3); None outside the layers."""
    m = LAYER_INDEX.search(param_name)
    return int(m.group(1)) if m else None


def is_router(facts: ArchFacts | None, param_name: str) -> bool:
    return bool(facts and facts.router) and f".{facts.mlp}.{facts.router}." in param_name


def is_attention(facts: ArchFacts | None, param_name: str) -> bool:
    return f".{facts.attention if facts else 'self_attn'}." in param_name


def is_mlp(facts: ArchFacts | None, param_name: str) -> bool:
    return f".{facts.mlp if facts else 'mlp'}." in param_name


def select_trained(names: list[str], facts: ArchFacts | None, cfg: MethodConfig) -> list[str]:
    """Parameter names that `freeze` (by `cfg.trainable`) or `full` trains; MoE routers only with `train_router`."""
    layers = [i for i in map(layer_index, names) if i is not None]
    first_top = (max(layers) + 1 - cfg.top_layers) if layers else 0
    rules = {
        "top_layers": lambda n: layer_index(n) is not None and layer_index(n) >= first_top,
        "attention": lambda n: is_attention(facts, n),
        "mlp": lambda n: is_mlp(facts, n),
        "regex": lambda n: re.search(cfg.trainable_regex or "", n) is not None,
    }
    rule = (lambda n: True) if cfg.name == "full" else rules[cfg.trainable]

    def trained(n: str) -> bool:
        if is_router(facts, n):
            return cfg.train_router
        vision = vision_trained(facts, n, cfg)
        if vision is not None and (cfg.name == "full" or cfg.trainable != "regex"):  # a regex picks what it names
            return vision
        return rule(n)

    return [n for n in names if trained(n)]


def in_tower(facts: ArchFacts | None, param_name: str) -> bool:
    """Whether a parameter belongs to a vision-language model's vision encoder (its projector included)."""
    name = "." + param_name
    return bool(facts) and any(f".{t}." in name for t in facts.towers)


def vision_trained(facts: ArchFacts | None, param_name: str, cfg: MethodConfig) -> bool | None:
    """Whether `method.vision` trains a vision-encoder parameter; None for a parameter outside the encoder."""
    if not in_tower(facts, param_name):
        return None
    projector = facts.projector is not None and any(
        f".{t}.{facts.projector}." in "." + param_name for t in facts.towers
    )
    return cfg.vision == "tower" or (cfg.vision == "projector" and projector)


def vision_modules(facts: ArchFacts | None, cfg: MethodConfig) -> list[str]:
    """Modules an adapter method saves whole for `method.vision` (PEFT modules_to_save): the projector, or the
    whole vision encoder."""
    if facts is None or not facts.towers or cfg.vision == "frozen":
        return []
    if cfg.vision == "tower":
        return list(facts.towers)
    return [f"{t}.{facts.projector}" for t in facts.towers] if facts.projector else []
