"""What we know about each architecture, by `config.model_type`: default LoRA targets and MoE layout.

Add an architecture = one entry. Unknown architectures fall back to PEFT's `all-linear`.
"""

from __future__ import annotations

from dataclasses import dataclass

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class ArchFacts:
    lora_targets: tuple[str, ...]
    moe: bool = False


ARCHS: dict[str, ArchFacts] = {
    "llama": ArchFacts(tuple(ATTN + MLP)),
    "mistral": ArchFacts(tuple(ATTN + MLP)),
    "qwen2": ArchFacts(tuple(ATTN + MLP)),
    "qwen3": ArchFacts(tuple(ATTN + MLP)),
    # Routed experts are fused 3-D parameters in transformers 5. PEFT maps MLP names (gate/up/down_proj) onto them
    # as target_parameters, which then also rules out LoRA dropout; so the MoE default is attention only.
    "qwen3_moe": ArchFacts(tuple(ATTN), moe=True),
    "deepseek_v3": ArchFacts(("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"), moe=True),
}


def arch_facts(model_type: str) -> ArchFacts | None:
    return ARCHS.get(model_type)
