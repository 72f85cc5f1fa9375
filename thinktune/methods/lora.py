"""LoRA (Hu et al. 2021) through PEFT, with DoRA, rsLoRA and PiSSA options and MoE expert targets.

    method: {name: lora, r: 16, alpha: 32, use_dora: false, use_rslora: false, init: default|gaussian|pissa}

MoE models: attention by default; `expert_lora: true` also adapts the fused routed experts, the shared experts and
the dense MLP layers, all as PEFT `target_parameters` (which cannot apply dropout, so it needs `dropout: 0`). The
router stays frozen unless `train_router` (then PEFT trains a full copy of it: `modules_to_save`).

PiSSA (Meng et al. 2024) starts the adapter from the top singular vectors and moves them *out of* the base weights.
An adapter saved that way only fits the modified base, so at save time it is converted (PEFT
`path_initial_model_for_weight_conversion`) into a plain rank-2r LoRA that loads onto the original model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import PreTrainedModel

from thinktune.config import MethodConfig
from thinktune.errors import ConfigError
from thinktune.methods.base import MethodContext, facts_of, method_state
from thinktune.models.registry import ArchFacts, vision_modules
from thinktune.runs import ADAPTER

# PiSSA with a few fast-SVD iterations: exact for what matters (W_res = W - A0 B0 is computed, not approximated)
# and minutes faster than a full SVD of every projection of a 7B model.
LORA_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa_niter_4"}


def check_lora(cfg: MethodConfig) -> None:
    if cfg.expert_lora and cfg.dropout != 0:
        raise ConfigError(
            f"method.expert_lora needs method.dropout=0: PEFT cannot apply dropout on fused expert parameters "
            f"(got {cfg.dropout})"
        )


def lora_targets(model: PreTrainedModel, cfg: MethodConfig) -> list[str] | str:
    """Linear modules to adapt: `all-linear`, the architecture defaults (`auto`), or the names given."""
    if cfg.target_modules == "all-linear":
        return "all-linear"
    if cfg.target_modules != "auto":
        return list(cfg.target_modules)
    facts = facts_of(model)
    if facts is None:
        return "all-linear"
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [t for t in facts.lora_targets if t in present]


def expert_targets(model: PreTrainedModel, cfg: MethodConfig, facts: ArchFacts | None) -> tuple[list[str], list[str]]:
    """(target_modules, target_parameters) with the routed experts, shared experts and dense MLPs added.

    All MLP weights go in as `target_parameters`: on MoE architectures PEFT re-maps the module names
    gate/up/down_proj onto the fused routed experts (transformers v4 compatibility), so naming them as modules would
    never reach the shared experts or the dense layers."""
    if facts is None or not facts.moe:
        model_type = getattr(model.config, "model_type", "?")
        raise ConfigError(
            f"method.expert_lora needs a mixture-of-experts model with a known layout; got '{model_type}'"
        )
    modules = lora_targets(model, cfg)
    if modules == "all-linear":
        raise ConfigError("method.expert_lora: use target_modules 'auto' or a list, not 'all-linear'")
    modules = [m for m in modules if m not in facts.mlp_linears]
    wanted = [f"{facts.mlp}.{facts.experts}.{p}" for p in facts.expert_params]
    blocks = [f"{facts.mlp}.{facts.shared_experts}"] if facts.shared_experts else []
    wanted += [f"{block}.{lin}.weight" for block in [facts.mlp, *blocks] for lin in facts.mlp_linears]
    names = [n for n, _ in model.named_parameters()]
    params = [w for w in wanted if any(n == w or n.endswith("." + w) for n in names)]
    return modules, params


def router_modules(facts: ArchFacts | None, cfg: MethodConfig) -> list[str] | None:
    if cfg.train_router and facts is not None and facts.router:
        return [f"{facts.mlp}.{facts.router}"]
    return None


def lora_config(model: PreTrainedModel, cfg: MethodConfig) -> LoraConfig:
    check_lora(cfg)
    facts = facts_of(model)
    targets, params = expert_targets(model, cfg, facts) if cfg.expert_lora else (lora_targets(model, cfg), None)
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        target_parameters=params,
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        init_lora_weights=LORA_INIT[cfg.init],
        modules_to_save=(router_modules(facts, cfg) or []) + vision_modules(facts, cfg) or None,
        exclude_modules=rf"(.*\.)?({'|'.join(facts.towers)})\..*" if facts and facts.towers else None,
        task_type="CAUSAL_LM",
    )


def wrap(model: PreTrainedModel, peft_cfg, what: str) -> PeftModel:
    try:
        return get_peft_model(model, peft_cfg)
    except (ValueError, TypeError, NotImplementedError) as e:  # PEFT's message says what is wrong
        raise ConfigError(f"method: {what} cannot be applied: {str(e).splitlines()[0]}") from None


def apply_lora(model: PreTrainedModel, cfg: MethodConfig, ctx: MethodContext | None = None) -> PeftModel:
    peft_model = wrap(model, lora_config(model, cfg), "LoRA")
    if cfg.init == "pissa":
        # The initial adapter, kept to convert the trained one into a plain LoRA at save time.
        initial = get_peft_model_state_dict(peft_model)
        method_state(peft_model)["pissa_initial"] = {k: v.detach().cpu().clone() for k, v in initial.items()}
    return peft_model


def save_lora(model: PeftModel, cfg: MethodConfig, run_dir: Path, state_dict: dict | None = None) -> Path:
    """`state_dict`: the model's tensors, gathered, when the model holds shards of them (FSDP)."""
    out = run_dir / ADAPTER
    initial = method_state(model).get("pissa_initial")
    if initial is None:
        model.save_pretrained(out, state_dict=state_dict)
        return out
    with tempfile.TemporaryDirectory() as tmp:
        init_dir = Path(tmp) / "pissa_init"
        init_dir.mkdir()
        save_file(initial, str(init_dir / "adapter_model.safetensors"))
        model.save_pretrained(out, path_initial_model_for_weight_conversion=str(init_dir))
    return out
