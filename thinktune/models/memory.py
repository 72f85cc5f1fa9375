"""Predict a training run's peak memory per device, and settings that fit a given device.

    thinktune plan --model smollm2-135m-instruct --method lora --batch-size 8 --seq-len 512 --device 24GB

Four parts, in bytes per device:
- weights: every parameter in the training dtype (QLoRA: decoder Linear weights in 4-bit NF4, ≈0.52 bytes each);
  PEFT keeps adapter weights in float32.
- gradients: one per parameter the optimizer updates, in that parameter's dtype (+ DDP's bucket copy with >1 GPU).
- optimizer: AdamW's two moments per updated parameter, in the parameter's dtype (torch keeps state in param dtype).
- activations: what autograd keeps for backward, per decoder layer (below), plus the logits and the working set
  of the backward pass.
The peak is not their sum: gradients appear as activations are released. Peak = weights + optimizer (+ DDP buckets)
+ max(activations, 2 × gradients) — the second term is the optimizer step, where AdamW's foreach implementation
holds one gradient-sized temporary besides the gradients.

Activation formula per decoder layer, T = batch × sequence tokens, e = bytes per element (2 bf16, 4 fp32), h hidden,
a/g query/kv heads of width d, i MLP width. Korthikanti et al. (2022) do the same bookkeeping for GPT; this one
follows transformers' Llama/Qwen/DeepSeek code and was checked tensor by tensor with saved-tensor hooks:
- each RMSNorm keeps its input upcast to float32: T·h·4 (+ its output T·h·e when its own weight trains);
- attention keeps q, k, v after RoPE and the output for SDPA (flash / memory-efficient kernels, no T×T scores):
  T·d·(2a + 2g)·e, k and v repeated to all a heads when a padding mask is present, + log-sum-exp b·a·s·4; with a
  padding mask SDPA also keeps, per layer, the mask turned into a float bias: b·s²·e;
- a SwiGLU MLP keeps gate, SiLU(gate) and up: 3·T·i·e; MoE blocks do this for each of the k experts a token is routed
  to (T·k·(3·i_e + h)·e, the h for the routing-weight product) plus router probabilities T·E·4 and the shared experts;
- a Linear keeps its input only when its weight trains (q/k/v and gate/up share theirs; o_proj reads a view of the
  attention output); a LoRA adapter with dropout keeps its dropped-out copy of the input (T·in·e) and the dropout
  mask (1 byte per element on CUDA, e on CPU), without dropout the shared input; and the rank-r intermediate T·r·e.
Layers below the lowest trained one keep nothing (freeze top_layers), and the lowest keeps nothing before the first
thing that trains (frozen embeddings need no gradient: no input norm, and no attention when only the MLP trains).
Head: the final norm's float32 input and the lm_head input, T·h·4 + b·k·h·4, k = the positions the LM head runs on
(s; GRPO: the completion, through `logits_to_keep`). Logits: the loss keeps float32 log-probabilities; the backward
adds their gradient and the logits' gradient: b·k·V·(8 + e) at its start, which the backward working set of one
layer, T·(2h + 2i)·e, rarely exceeds.
GRPO (`thinktune plan --grpo-generations G --completion-length L`): a micro-batch of b prompts trains on b·G
sequences of prompt + completion with k = L; full / freeze / ESFT keep a frozen copy of the weights as the KL
reference (LoRA uses the disabled adapter). Sampling (no gradients: KV cache and one position's logits) needs less
than the training pass and is not counted.
With gradient checkpointing each layer keeps only its input (T·h·e) and one layer at a time is recomputed, so the
second term becomes max(logits, one layer + its backward working set).
Vision-language models (`--image-tokens N`: image tokens per sample, counted within the sequence): the vision encoder
sees N·merge² patches per sample, P in all. It keeps nothing when nothing in it trains (`method.vision: frozen`: no
parameter and no input of it needs a gradient). The projector (`projector`) keeps its norm's float32 input and its
MLP's inputs, P·hv·(4 + 3e); the whole encoder (`tower`) also keeps, per block, two float32 norm inputs, the
attention's input, q/k/v and output and the SwiGLU MLP's input, gate, SiLU and up: P·(8·hv + e·(6·hv + 3·iv)). This
part follows the same bookkeeping on transformers' Qwen2.5-VL vision code; unlike the decoder it was not checked
tensor by tensor.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Literal

from thinktune.config import MethodConfig
from thinktune.models.registry import (
    ARCHS,
    ArchFacts,
    in_tower,
    is_router,
    layer_index,
    select_trained,
    vision_modules,
)

Precision = Literal["bf16", "fp32"]
GiB = 2**30
NF4_BYTES = 0.5 + 0.5 / 64 * (8 / 32 + 4 / 256)  # 4 bits + double-quantised absmax per 64-block (QLoRA §2)
PEFT_METHODS = ("lora", "qlora", "adalora", "prompt_tuning", "p_tuning", "prefix_tuning", "ia3")
SHARED_INPUT = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "q_a_proj", "kv_a_proj_with_mqa"}


@dataclass(frozen=True)
class Linear:
    name: str  # full module name, e.g. model.layers.0.self_attn.q_proj
    inputs: int
    outputs: int


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a model the planner needs; `shape_from_config` reads them without allocating weights."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    params: tuple[tuple[str, int], ...]  # (name, numel) of every parameter, tied ones once
    linears: tuple[Linear, ...] = ()
    experts: tuple[tuple[str, int, int, int], ...] = ()  # fused expert params: (name, experts, in, out)
    qk_norm: bool = False
    num_experts: int = 0
    experts_per_token: int = 0
    expert_intermediate: int = 0
    shared_intermediate: int = 0
    dense_layers: tuple[int, ...] = ()  # MoE models: layers with a dense MLP
    q_lora_rank: int = 0  # DeepSeek multi-head latent attention (0: standard attention)
    kv_lora_rank: int = 0
    qk_head_dim: int = 0
    v_head_dim: int = 0
    vision_layers: int = 0  # vision-language models: the vision encoder's blocks (0: a text-only model)
    vision_hidden: int = 0
    vision_intermediate: int = 0
    merge: int = 1  # patches merged into one image token per side (Qwen2-VL family: 2)

    @property
    def total_params(self) -> int:
        return sum(n for _, n in self.params)

    @property
    def moe(self) -> bool:
        return self.num_experts > 0

    @property
    def facts(self) -> ArchFacts | None:
        return ARCHS.get(self.model_type)


@dataclass(frozen=True)
class TrainSetup:
    method: MethodConfig = field(default_factory=MethodConfig)
    batch_size: int = 8  # per device, per micro-batch
    seq_len: int = 512
    precision: Precision = "bf16"
    gradient_checkpointing: bool = False
    gpus: int = 1
    padded: bool = True  # batches carry a padding mask (SDPA then repeats k/v and keeps a float mask per layer)
    device: Literal["cuda", "cpu"] = "cuda"  # CPU dropout keeps a full-width float mask, CUDA a 1-byte one
    logits_len: int | None = None  # positions the LM head runs on (GRPO: the completion, `logits_to_keep`)
    reference_copy: bool = False  # a frozen copy of the weights (GRPO / DPO reference for full, freeze, ESFT)
    image_tokens: int = 0  # vision-language models: image tokens per sample, within seq_len


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int  # the parameters' own gradients (+ DDP's bucket copy, `ddp_buckets`)
    optimizer: int
    activations: int
    trainable: int  # parameters the method trains
    updated: int  # parameters the optimizer holds state for (ESFT: whole fused expert tensors)
    total_params: int
    ddp_buckets: int = 0

    @property
    def total(self) -> int:
        """Peak: weights, optimizer state and DDP buckets stay resident; on top, either the activations (at the
        start of the backward pass, before gradients exist) or, at the optimizer step, the gradients plus AdamW's
        gradient-sized temporary (foreach implementation) — whichever is larger."""
        own_grads = self.gradients - self.ddp_buckets
        return self.weights + self.optimizer + self.ddp_buckets + max(self.activations, 2 * own_grads)

    def parts(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "gradients": self.gradients,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "peak": self.total,
        }


# --- reading a model ---------------------------------------------------------------------------------------------


def shape_from_config(config) -> ModelShape:
    """Count parameters and Linear shapes by building the model on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    vision = getattr(config, "vision_config", None)
    with torch.device("meta"):
        model = (AutoModelForImageTextToText if vision is not None else AutoModelForCausalLM).from_config(config)
    params = tuple((n, p.numel()) for n, p in model.named_parameters())
    linears = tuple(
        Linear(n, m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    )
    experts = tuple(
        (n, p.shape[0], p.shape[2], p.shape[1]) for n, p in model.named_parameters() if p.ndim == 3
    )  # transformers 5 fused experts: (E, out, in)
    text = getattr(config, "text_config", None) or config
    heads = text.num_attention_heads
    hidden = text.hidden_size
    num_experts = getattr(text, "num_experts", None) or getattr(text, "n_routed_experts", None) or 0
    dense = ()
    if num_experts:
        moe_layers = {layer_index(n) for n, *_ in experts}
        dense = tuple(i for i in range(text.num_hidden_layers) if i not in moe_layers)
    qk_nope, qk_rope = getattr(text, "qk_nope_head_dim", 0) or 0, getattr(text, "qk_rope_head_dim", 0) or 0
    return ModelShape(
        model_type=config.model_type,
        hidden=hidden,
        layers=text.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or hidden // heads,
        intermediate=text.intermediate_size,
        vocab=text.vocab_size,
        params=params,
        linears=linears,
        experts=experts,
        qk_norm=any(n.endswith("q_norm.weight") for n, _ in params),
        num_experts=num_experts,
        experts_per_token=getattr(text, "num_experts_per_tok", 0) or 0,
        expert_intermediate=getattr(text, "moe_intermediate_size", 0) or 0,
        shared_intermediate=(getattr(text, "moe_intermediate_size", 0) or 0)
        * (getattr(text, "n_shared_experts", 0) or 0),
        dense_layers=dense,
        q_lora_rank=getattr(text, "q_lora_rank", 0) or 0,
        kv_lora_rank=getattr(text, "kv_lora_rank", 0) or 0,
        qk_head_dim=qk_nope + qk_rope,
        v_head_dim=getattr(text, "v_head_dim", 0) or 0,
        vision_layers=(getattr(vision, "depth", None) or getattr(vision, "num_hidden_layers", 0)) if vision else 0,
        vision_hidden=getattr(vision, "hidden_size", 0) if vision else 0,
        vision_intermediate=getattr(vision, "intermediate_size", 0) if vision else 0,
        merge=getattr(vision, "spatial_merge_size", 1) if vision else 1,
    )


def parse_size(text: str) -> int:
    """'24GB', '80GiB', '16g', '1.5TB' → bytes (GB taken as GiB, as GPU makers print them)."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise ValueError(f"cannot read a memory size from {text!r} (e.g. 24GB)")
    return int(float(m.group(1)) * 1024 ** "bkmgt".index(m.group(2) or "b"))


# --- what a method trains ----------------------------------------------------------------------------------------


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def lora_modules(shape: ModelShape, method: MethodConfig) -> list[Linear]:
    """The Linear modules a LoRA-family method adapts (the planner's copy of methods.lora.lora_targets)."""
    decoder = [lin for lin in shape.linears if layer_index(lin.name + ".") is not None]
    facts = shape.facts
    if method.target_modules == "all-linear" or (method.target_modules == "auto" and facts is None):
        return decoder
    names = set(method.target_modules if method.target_modules != "auto" else facts.lora_targets)
    if method.expert_lora and facts is not None:
        names |= set(facts.mlp_linears)
    return [lin for lin in decoder if _leaf(lin.name) in names]


def trained_param_names(shape: ModelShape, method: MethodConfig) -> list[str]:
    """freeze / full / esft: names of base parameters that train (the methods' own rules, on names only)."""
    names = [n for n, _ in shape.params]
    if method.name == "esft":
        return [n for n, *_ in shape.experts] + (
            [n for n in names if is_router(shape.facts, n)] if method.train_router else []
        )
    return select_trained(names, shape.facts, method)


def trainable_counts(shape: ModelShape, method: MethodConfig) -> tuple[int, int]:
    """(trained, optimizer-updated) parameter counts. They differ only for ESFT, whose optimizer holds whole
    fused expert tensors while only the selected experts' rows change."""
    r, name = method.r, method.name
    if name in ("lora", "qlora", "adalora"):
        mods = lora_modules(shape, method)
        n = sum(r * (m.inputs + m.outputs) for m in mods)
        if name == "adalora":
            n += r * len(mods)
        if method.use_dora:
            n += sum(m.outputs for m in mods)
        if method.expert_lora:
            n += sum(r * e * (i + o) for _, e, i, o in shape.experts)
        if method.train_router:
            n += sum(c for p, c in shape.params if is_router(shape.facts, p))
        n += vision_saved(shape, method)
        return n, n
    if name == "ia3":
        facts = shape.facts
        targets = set(facts.ia3_targets if facts else ("k_proj", "v_proj", "down_proj"))
        ff = set(facts.ia3_feedforward if facts else ("down_proj",))
        mods = [m for m in shape.linears if _leaf(m.name) in targets and layer_index(m.name + ".") is not None]
        n = sum(m.inputs if _leaf(m.name) in ff else m.outputs for m in mods)
        if method.train_router:
            n += sum(c for p, c in shape.params if is_router(shape.facts, p))
        return n, n
    v = method.num_virtual_tokens
    if name == "prompt_tuning":
        return v * shape.hidden, v * shape.hidden
    if name == "p_tuning":  # embedding + PEFT's 3-layer MLP prompt encoder of width `hidden`
        n = v * shape.hidden + 3 * (shape.hidden**2 + shape.hidden)
        return n, n
    if name == "prefix_tuning":
        n = v * shape.layers * 2 * shape.kv_heads * shape.head_dim
        return n, n
    sizes = dict(shape.params)
    names = trained_param_names(shape, method)
    updated = sum(sizes[n] for n in names)
    if name == "esft":  # uniform routing: ⌈p·E⌉ experts reach a cumulative share p
        frac = math.ceil(method.esft_threshold * shape.num_experts) / max(shape.num_experts, 1)
        expert_total = sum(sizes[n] for n, *_ in shape.experts)
        return int(updated - expert_total * (1 - frac)), updated
    return updated, updated


def vision_saved(shape: ModelShape, method: MethodConfig) -> int:
    """Parameters an adapter method trains whole for `method.vision` (the projector, or the vision encoder)."""
    modules = [f".{m}." for m in vision_modules(shape.facts, method)]
    return sum(c for p, c in shape.params if any(m in "." + p for m in modules))


def unsupported(shape: ModelShape, method: MethodConfig) -> str | None:
    """Why the method cannot run on this model (what apply_method would refuse), or None."""
    if (method.name == "esft" or method.expert_lora) and not shape.moe:
        what = "expert_lora" if method.expert_lora else method.name
        return f"{what} needs a mixture-of-experts model"
    if method.name == "prefix_tuning" and shape.facts is not None and not shape.facts.prefix_tuning:
        return f"prefix_tuning does not support '{shape.model_type}'"
    if method.vision != "frozen" and not shape.vision_layers:
        return f"method.vision={method.vision} needs a vision-language model"
    return None


# --- the estimate --------------------------------------------------------------------------------------------------


def _bytes(precision: Precision) -> int:
    return 2 if precision == "bf16" else 4


def weight_bytes(shape: ModelShape, setup: TrainSetup, trainable: int) -> int:
    e = _bytes(setup.precision)
    base = shape.total_params * e
    if setup.method.name == "qlora":
        quantised = sum(m.inputs * m.outputs for m in shape.linears if layer_index(m.name + ".") is not None)
        base = int(quantised * NF4_BYTES + (shape.total_params - quantised) * e)
    adapters = trainable * 4 if setup.method.name in PEFT_METHODS else 0  # PEFT upcasts adapters to float32
    return base * (2 if setup.reference_copy else 1) + adapters


def _trained_layers(shape: ModelShape, method: MethodConfig) -> tuple[int, set[str]]:
    """(lowest decoder layer a gradient must reach, names of trained base parameters)."""
    if method.name not in ("freeze", "full", "esft"):
        return 0, set()
    names = set(trained_param_names(shape, method))
    decoder = [i for i in map(layer_index, names) if i is not None]
    if any("embed" in n and not in_tower(shape.facts, n) for n in names):
        return 0, names
    return (min(decoder) if decoder else shape.layers), names


def _tokens(setup: TrainSetup) -> int:
    m = setup.method
    return setup.batch_size * (setup.seq_len + (m.num_virtual_tokens if m.name in ("prompt_tuning", "p_tuning") else 0))


def _adapted(shape: ModelShape, m: MethodConfig) -> set[str]:
    return {lin.name for lin in lora_modules(shape, m)} if m.name in ("lora", "qlora", "adalora") else set()


def layer_activation_bytes(shape: ModelShape, setup: TrainSetup, layer: int, trained: set[str], first: bool) -> int:
    """Bytes autograd keeps for one decoder layer in the forward pass (see the module docstring).

    `first`: the layer's input needs no gradient (frozen embeddings below); its input norm then keeps nothing, and
    neither does its attention unless something in it trains."""
    m, e, b, s = setup.method, _bytes(setup.precision), setup.batch_size, setup.seq_len
    T, h, a, d = _tokens(setup), shape.hidden, shape.heads, shape.head_dim
    attn = f".layers.{layer}.{shape.facts.attention if shape.facts else 'self_attn'}."
    adapted = _adapted(shape, m)
    attention_trains = any(attn in n for n in trained) or any(attn in n + "." for n in adapted)
    attention_trains |= m.name in ("ia3", "prefix_tuning")
    keep_attention = not first or attention_trains

    total = T * h * 4 * ((0 if first else 1) + (1 if keep_attention else 0))  # RMSNorm inputs in float32
    total += sum(T * h * e for n in trained if f".layers.{layer}." in n and n.endswith("layernorm.weight"))
    if keep_attention:
        if shape.q_lora_rank:  # DeepSeek MLA: latent norms + query/key/value/output at the SDPA call
            qk, v = shape.qk_head_dim, shape.v_head_dim
            total += T * (shape.q_lora_rank + shape.kv_lora_rank) * 4 + T * a * (2 * qk + 2 * v) * e
        else:
            g = a if setup.padded else shape.kv_heads
            total += T * d * (2 * a + 2 * g) * e
            if shape.qk_norm:
                total += T * d * (a + shape.kv_heads) * 4
        total += b * a * s * 4  # log-sum-exp
        if setup.padded:
            total += b * s * s * e  # SDPA turns the boolean padding mask into a float bias, kept per layer
    if shape.moe and layer not in shape.dense_layers:
        Tk, ie = T * shape.experts_per_token, shape.expert_intermediate
        total += T * shape.num_experts * 4 + Tk * (3 * ie + h) * e + 3 * T * shape.shared_intermediate * e
        experts_train = any(f".layers.{layer}." in n for n, *_ in shape.experts if n in trained)
        if experts_train or (m.expert_lora and m.name in ("lora", "qlora")):
            total += Tk * (h + ie) * e  # inputs of the expert matmuls
    else:
        total += 3 * T * shape.intermediate * e
    return total + _linear_inputs(shape, setup, layer, trained, first)


def _input_group(lin: Linear) -> tuple[str, str] | None:
    """Linears that read the same tensor (q/k/v, gate/up) keep it once; o_proj reads a view of the attention
    output, which SDPA keeps anyway."""
    parent, leaf = lin.name.rsplit(".", 1)
    if leaf == "o_proj":
        return None
    return (parent, str(lin.inputs)) if leaf in SHARED_INPUT else (parent, leaf)


def _linear_inputs(shape: ModelShape, setup: TrainSetup, layer: int, trained: set[str], first: bool) -> int:
    m, e, T = setup.method, _bytes(setup.precision), _tokens(setup)
    prefix = f".layers.{layer}."
    attn = f"{prefix}{shape.facts.attention if shape.facts else 'self_attn'}."
    adapted = _adapted(shape, m)
    ia3 = set()
    if m.name == "ia3":
        ia3 = set(shape.facts.ia3_targets if shape.facts else ("k_proj", "v_proj", "down_proj"))
    kept: dict[tuple[str, str], int] = {}  # input group → width
    total = 0
    for lin in shape.linears:
        if prefix not in lin.name + ".":
            continue
        group, leaf = _input_group(lin), lin.name.rsplit(".", 1)[1]
        reads_layer_input = first and attn in lin.name + "." and leaf in SHARED_INPUT
        if lin.name in adapted:
            total += T * m.r * e  # the rank-r intermediate
            if m.dropout > 0:
                mask = 0 if reads_layer_input else (e if setup.device == "cpu" else 1)
                total += T * lin.inputs * (e + mask)  # the dropped-out copy and the dropout mask
            elif group is not None:
                kept[group] = lin.inputs
        elif f"{lin.name}.weight" in trained and group is not None:
            kept[group] = lin.inputs
        if leaf in ia3:  # IA³ scales the output (k, v) or the input (feed-forward) of the projection
            total += T * (lin.inputs if leaf == "down_proj" else lin.outputs) * e
    return total + sum(T * width * e for width in kept.values())


def activation_bytes(shape: ModelShape, setup: TrainSetup) -> int:
    m, e = setup.method, _bytes(setup.precision)
    lowest, trained = _trained_layers(shape, m)
    input_grad = m.name in ("prompt_tuning", "p_tuning") or any("embed" in n for n in trained)
    per_layer = [
        layer_activation_bytes(shape, setup, i, trained, first=(i == lowest and not input_grad))
        for i in range(lowest, shape.layers)
    ]
    T, h = _tokens(setup), shape.hidden
    kept = setup.batch_size * (setup.logits_len or setup.seq_len)  # positions the LM head runs on
    head = T * h * 4 + kept * h * 4  # final norm (float32 input) and the lm_head input
    logits = kept * shape.vocab * (8 + e)  # log-probs, their gradient, logits' gradient
    width = shape.expert_intermediate * shape.experts_per_token if shape.moe else shape.intermediate
    backward = T * (2 * h + 2 * width) * e  # gradients alive inside the layer being back-propagated
    vision = vision_activation_bytes(shape, setup)
    if setup.gradient_checkpointing and per_layer:
        return vision + len(per_layer) * T * h * e + head + max(logits, max(per_layer) + backward)
    return vision + sum(per_layer) + head + max(logits, backward)


def vision_activation_bytes(shape: ModelShape, setup: TrainSetup) -> int:
    """What the vision encoder keeps for backward (module docstring): nothing while it is frozen."""
    m, e = setup.method, _bytes(setup.precision)
    if not shape.vision_layers or not setup.image_tokens or m.vision == "frozen":
        return 0
    patches = setup.batch_size * setup.image_tokens * shape.merge**2
    hv, iv = shape.vision_hidden, shape.vision_intermediate
    total = patches * hv * (4 + 3 * e)  # the projector
    if m.vision == "tower":
        total += shape.vision_layers * patches * (8 * hv + e * (6 * hv + 3 * iv))
    return total


def estimate(shape: ModelShape, setup: TrainSetup) -> MemoryEstimate:
    trainable, updated = trainable_counts(shape, setup.method)
    peft = setup.method.name in PEFT_METHODS
    param_bytes = 4 if peft else _bytes(setup.precision)
    grads = updated * param_bytes
    buckets = grads if setup.gpus > 1 else 0  # DDP all-reduces through a persistent gradient-sized bucket copy
    return MemoryEstimate(
        weights=weight_bytes(shape, setup, trainable),
        gradients=grads + buckets,
        ddp_buckets=buckets,
        optimizer=2 * updated * param_bytes,
        activations=activation_bytes(shape, setup),
        trainable=trainable,
        updated=updated,
        total_params=shape.total_params,
    )


# --- recommendations -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    setup: TrainSetup
    estimate: MemoryEstimate
    fits: bool
    note: str


def fits(est: MemoryEstimate, device_bytes: int, headroom: float = 0.9) -> bool:
    """Leave 10% for the CUDA context, allocator fragmentation and kernels' workspaces."""
    return est.total <= device_bytes * headroom


def recommend(shape: ModelShape, setup: TrainSetup, device_bytes: int) -> Recommendation:
    """Settings that fit: the asked ones if they do; else gradient checkpointing on, then the largest batch (then
    sequence) that fits, then QLoRA; the longest sequence is kept as long as any batch fits."""
    est = estimate(shape, setup)
    if fits(est, device_bytes):
        return Recommendation(setup, est, True, "fits as asked")
    steps = [replace(setup, gradient_checkpointing=True)]
    if setup.method.name not in ("qlora",) and setup.method.name in PEFT_METHODS + ("freeze", "full", "esft"):
        steps.append(replace(steps[0], method=setup.method.model_copy(update={"name": "qlora"})))
    for candidate in steps:
        found = _largest_fitting(shape, candidate, device_bytes)
        if found is not None:
            what = []
            if candidate.gradient_checkpointing and not setup.gradient_checkpointing:
                what.append("gradient checkpointing on")
            if candidate.method.name != setup.method.name:
                what.append(f"method {candidate.method.name}")
            if found.batch_size != setup.batch_size:
                what.append(f"batch size {found.batch_size} (use gradient accumulation for the rest)")
            if found.seq_len != setup.seq_len:
                what.append(f"sequence length {found.seq_len}")
            return Recommendation(found, estimate(shape, found), True, ", ".join(what) or "fits")
    return Recommendation(setup, est, False, "does not fit even with QLoRA, batch 1 and checkpointing")


def _largest_fitting(shape: ModelShape, setup: TrainSetup, device_bytes: int) -> TrainSetup | None:
    batch = setup.batch_size
    while batch >= 1:  # the asked batch down to 1 at the asked length
        candidate = replace(setup, batch_size=batch)
        if fits(estimate(shape, candidate), device_bytes):
            return candidate
        batch //= 2
    seq = setup.seq_len // 2
    while seq >= 64:  # then shorter sequences at batch 1
        candidate = replace(setup, batch_size=1, seq_len=seq)
        if fits(estimate(shape, candidate), device_bytes):
            return candidate
        seq //= 2
    return None


def model_shape(name_or_path: str, gguf_file: str | None = None, revision: str | None = None) -> ModelShape:
    """ModelShape of a model reference (bundled name, directory, .gguf, Hub id); reads its config only."""
    from transformers import AutoConfig

    from thinktune.models.loading import resolve_model

    source = resolve_model(name_or_path, gguf_file, revision)
    return shape_from_config(AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file))
