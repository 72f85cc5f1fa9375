"""One YAML file describes a run. Validated here once, then passed down as typed, read-only values.

`load_config(path, overrides)` reads the YAML (or the quickstart shipped in the package), applies `--set a.b=value`
overrides, and validates with pydantic. Errors name the file, the line and the field, and suggest the closest valid
key for a typo.
"""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from thinktune.data.dataset_info import with_references
from thinktune.data.spec import AugmentConfig, CleaningConfig, DatasetSpec
from thinktune.errors import ConfigError

QUICKSTART = "quickstart.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)  # `-o 2024` is a path


class ModelConfig(Section):
    name_or_path: str = Field(
        "smollm2-135m-instruct",
        description="Bundled model name (`smollm2-135m-instruct`), a local Hugging Face directory, a `.pt`/`.bin` "
        "state dict (config.json and tokenizer files next to it; read with weights_only), a `.gguf` file, or a "
        "Hugging Face Hub id `org/name` (read from the HF cache, downloaded into it when online).",
    )
    revision: str | None = Field(
        None, description="Hub ids only: branch, tag or commit of the model repo (default: main)."
    )
    gguf_file: str | None = Field(
        None, description="GGUF file name inside `name_or_path` when it is a directory or a Hub repo."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype: `auto` is bfloat16 on a GPU that supports it, float32 otherwise."
    )
    chat_template: str | None = Field(None, description="Jinja chat template replacing the tokenizer's own.")
    trust_remote_code: bool = Field(False, description="Allow model code shipped inside the model directory.")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3"] = Field(
        "auto",
        description="Attention kernel: `auto` = transformers' default (SDPA); flash_attention_* needs CUDA + "
        "flash-attn (packed batches then run as varlen attention).",
    )


class RagConfig(Section):
    index: str = Field(description="Index folder built by `thinktune rag index DOCS_DIR -o INDEX`.")
    k: int = Field(
        4, gt=0, description="Passages retrieved for each question at inference: evaluation, `chat` and `serve`."
    )
    distractors: int = Field(
        3,
        ge=0,
        description="Training: distractor passages per prompt, the best-ranked chunks for the question that are not "
        "gold (a prompt without its gold passage gets one more: with one gold id the count gives nothing away).",
    )
    gold_fraction: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Training: share of records that keep their gold passages (RAFT's P, Zhang et al. 2024); the "
        "rest see distractors only. Gold ids come from each record's `gold_ids` field.",
    )
    retriever: Literal["hybrid", "bm25", "dense"] = Field(
        "hybrid", description="Ranking: BM25, dense (all-MiniLM-L6-v2) or both fused by reciprocal rank."
    )


class DataConfig(Section):
    train: list[str | DatasetSpec] = Field(
        default_factory=lambda: ["bundled:arithmetic/train"],
        description="Training files (JSON/JSONL/CSV/Parquet/datasets dir), bundled sets such as "
        "`bundled:arithmetic/train`, Hub datasets (`hf:openai/gsm8k:main[train]`, from the HF cache), or specs "
        "{path, format, columns, weight, split} to mix several.",
    )
    test: str | None = Field(
        "bundled:arithmetic/test", description="Held-out set for evaluation before and after training."
    )
    dataset_dir: str | None = Field(
        None,
        description="A LLaMA-Factory data folder (holding `dataset_info.json`): `train`, `test` and `validation` may "
        "then name its datasets (`[alpaca_en_demo, identity]`), read with each entry's formatting, columns, tags, "
        "ranking and num_samples. Names become references `DIR/dataset_info.json#NAME` in the run's config.yaml.",
    )
    format: Literal["auto", "messages", "alpaca", "sharegpt", "question_answer", "query_response", "text_context"] = (
        Field("auto", description="Record format; `auto` detects it per record.")
    )
    system_prompt: str | None = Field(
        None, description="System message added to every conversation that has none (training and evaluation)."
    )
    thinking: Literal["auto", "on", "off", "per-record"] = Field(
        "auto",
        description="Thinking mode each record is rendered in (the template's `enable_thinking`): `auto` = the "
        "record's `enable_thinking` field, else on when it has reasoning; `on`/`off` = every record (off drops "
        "reasoning); `per-record` = the record's field, on when absent. Chat, eval and serve use the same switch.",
    )
    multi_turn: Literal["every_turn", "last"] = Field(
        "every_turn",
        description="`every_turn`: every assistant turn is trained with the history as the template shows it at "
        "inference (turns whose prompt extends the previous sample share one sequence); `last`: the final turn only.",
    )
    empty_think_in_loss: bool = Field(
        False,
        description="Non-thinking samples: train the empty think block the template writes after the generation "
        "prompt (Qwen3 `<think>\\n\\n</think>`), instead of keeping it in the prompt as inference does.",
    )
    max_parity_mismatch: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Refuse the run when more than this fraction of samples tokenise differently from the inference "
        "prompt (each mismatch is a reject with file:line and a short diff).",
    )
    max_length: int = Field(1024, gt=8, description="Token limit per sample; longer samples are rejected, not cut.")
    max_bad_fraction: float = Field(
        0.1, ge=0, le=1, description="Stop the run when more than this fraction of records is unusable."
    )
    max_train_samples: int | None = Field(None, gt=0, description="Use only the first N usable training samples.")
    validation: str | None = Field(None, description="Validation file for in-training evaluation (eval_steps).")
    balance_by: str | None = Field(
        None,
        description="Meta field to balance sampling on (inverse frequency); `modality` splits image and text records.",
    )
    balance_weights: dict[str, float] | None = Field(None, description="Share per balance_by value.")
    cleaning: CleaningConfig | None = Field(None, description="Cleaning stage (dedup, quality filters, PII).")
    augment: AugmentConfig | None = Field(
        None,
        description="Prompt augmentation each epoch: `augmenters` (templates, back_translation), `template_fraction`, "
        "`templates`, `back_translation` (teacher, pivot_language, fraction); see docs/data.md.",
    )
    rag: RagConfig | None = Field(
        None,
        description="Retrieval-augmented prompts (see `data.rag.*`): training prompts get the gold passage and "
        "distractors, evaluation, chat and serve the passages retrieved for the question (docs/rag.md).",
    )
    num_proc: int = Field(1, gt=0, description="Processes for tokenisation.")
    cache: bool = Field(True, description="Cache tokenised datasets by content hash.")
    cache_dir: str | None = Field(None, description="Cache folder (default <THINKTUNE_HOME>/data).")
    seed: int = Field(42, description="Seed for fractional dataset weights and augmentation.")

    @field_validator("train", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, (str, dict)) else v

    @field_validator("thinking", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        """YAML reads a bare on/off (`thinking: off`, `--set data.thinking=off`) as a boolean: it means the word."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="before")
    @classmethod
    def _dataset_names(cls, data: Any) -> Any:
        return with_references(data) if isinstance(data, dict) else data


class MethodConfig(Section):
    name: Literal[
        "lora", "qlora", "adalora", "prompt_tuning", "p_tuning", "prefix_tuning", "ia3", "freeze", "full", "esft"
    ] = Field("lora", description="Tuning method, from the methods registry.")
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["auto", "all-linear"] = Field(
        "auto", description="Module names to adapt; `auto` uses the architecture's defaults."
    )
    use_dora: bool = Field(False, description="LoRA: weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(False, description="LoRA: rank-stabilised scaling alpha/sqrt(r).")
    init: Literal["default", "gaussian", "pissa"] = Field("default", description="LoRA init; `pissa` = PiSSA (SVD).")
    target_r: int = Field(8, gt=0, description="AdaLoRA: average rank after budget reallocation.")
    num_virtual_tokens: int = Field(20, gt=0, description="Prompt/p-/prefix-tuning: virtual tokens.")
    trainable: Literal["top_layers", "attention", "mlp", "regex"] = Field(
        "top_layers", description="freeze: what stays trainable."
    )
    top_layers: int = Field(2, gt=0, description="freeze (top_layers): number of last decoder layers to train.")
    trainable_regex: str | None = Field(None, description="freeze (regex): parameter names to train.")
    train_router: bool = Field(False, description="MoE: also train the router (gate) weights.")
    expert_lora: bool = Field(False, description="MoE: LoRA also on fused routed experts (needs dropout 0).")
    esft_threshold: float = Field(0.2, gt=0, le=1, description="ESFT: cumulative expert-share threshold p per layer.")
    esft_score: Literal["gate", "token"] = Field(
        "gate", description="ESFT: rank experts by gate-score share or token-selection ratio."
    )
    progressive_unfreeze_step: int | None = Field(
        None, gt=0, description="Progressive: train attention first, unlock the MLP at this optimizer step."
    )
    vision: Literal["frozen", "projector", "tower"] = Field(
        "frozen",
        description="Vision-language models (lora, freeze, full): `frozen` trains the language model only; "
        "`projector` also trains the vision-to-text projector in full; `tower` the whole vision encoder with it.",
    )


class TrainConfig(Section):
    epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="Time budget: stop after the first optimizer step that ends past this many minutes of training "
        "(a resumed run counts the time before its checkpoint), then save and evaluate as usual. The learning-rate "
        "schedule still spans max_steps/epochs.",
    )
    batch_size: int = Field(8, gt=0, description="Samples per micro-batch.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    learning_rate: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate; unset: the method's own default, scaled to the model's width "
        "(docs/methods.md).",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps spent warming up linearly.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null disables clipping.")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="Autocast precision: `auto` picks bf16 on GPUs that support it, none on CPU."
    )
    seed: int = Field(42, description="Seed for data order, LoRA init and dropout.")
    logging_steps: int = Field(1, gt=0, description="Write metrics every N optimizer steps.")
    num_threads: int | None = Field(None, gt=0, description="CPU threads for torch (default: all cores).")
    save_steps: int | None = Field(None, gt=0, description="Checkpoint every N optimizer steps (and at epoch end).")
    save_total_limit: int = Field(2, gt=0, description="Keep the last K checkpoints.")
    report_to: list[Literal["tensorboard", "mlflow", "wandb", "swanlab", "trackio"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Experiment trackers besides metrics.jsonl (the name transformers uses), each fed the same scalars "
        "and the run config: tensorboard (`run_dir/tensorboard`), mlflow (`mlflow_tracking_uri`), wandb (`WANDB_DIR` "
        "or the run dir; `WANDB_MODE=offline` needs no account), swanlab (`SWANLAB_LOGDIR` or `run_dir/swanlog`; "
        "`SWANLAB_MODE=offline`), trackio (its local store, `TRACKIO_DIR`). Extras: `pip install 'thinktune[wandb]'` "
        "(mlflow, swanlab, trackio alike).",
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow store (default: sqlite:///<run_dir>/mlflow.db); a file: or sqlite: URI."
    )
    layer_stats_steps: int = Field(0, ge=0, description="Every K steps log per-layer grad and update norms (0 = off).")
    max_bad_steps: int = Field(10, ge=0, description="Stop after this many NaN/inf steps (each one is skipped).")
    spike_action: Literal["warn", "stop", "rollback"] = Field(
        "warn", description="On a grad-norm spike above mean + 3σ of the window: warn, stop, or roll back with lr/2."
    )
    spike_window: int = Field(20, gt=2, description="Steps in the grad-norm spike window.")
    eval_steps: int | None = Field(None, gt=0, description="Validate every N steps (loss + generation metrics).")
    early_stopping_patience: int | None = Field(None, gt=0, description="Stop after N validations without gain.")
    plateau_patience: int | None = Field(None, gt=0, description="Halve the lr after N validations without gain.")
    metric_for_best: str = Field(
        "val_loss", description="Validation metric for early stopping / plateau / load_best_at_end."
    )
    load_best_at_end: bool = Field(
        False,
        description="Validate the starting weights too, and end with the weights of the best validation "
        "(metric_for_best) instead of the last step's. Needs eval_steps and data.validation.",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing on the CE loss.")
    ewc_lambda: float = Field(0.0, ge=0, description="EWC penalty weight (needs ewc_fisher).")
    ewc_fisher: str | None = Field(None, description="EWC: Fisher file from a previous task's run (fisher.pt).")
    save_fisher: bool = Field(False, description="Write fisher.pt at the end of the run for a later run's EWC.")
    packing: bool | Literal["auto"] = Field(
        "auto",
        description="Pack each micro-batch's samples into rows, position ids reset per sample (same loss, less "
        "padding). auto: on, except for virtual-token methods (prompt/prefix tuning), where it cannot apply.",
    )
    loss_chunk_size: int | Literal["auto"] | None = Field(
        "auto",
        description="Apply the LM head on trained tokens only, in chunks of N (no full logits tensor; same loss). "
        "auto: 1024 where it applies (cross-entropy only, a plain LM head), else the full-logits loss; null: off.",
    )
    torch_compile: bool = Field(False, description="torch.compile the model (pays off on long runs).")
    distributed: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description="How the processes of `--num-processes N` or `accelerate launch` share the model: `ddp` (each "
        "holds all of it), `fsdp` (FSDP2: parameters, gradients and optimizer state sharded across them, for a model "
        "one device cannot train; methods lora, full, freeze). auto: what accelerate launch's config says, else ddp.",
    )
    optimizer: Literal["adamw", "adamw_fused"] = Field(
        "adamw_fused", description="Fused AdamW (one kernel; foreach where the parameters do not allow it) or AdamW."
    )
    liger_kernels: bool = Field(
        False, description="CUDA: Liger Triton kernels for RMSNorm, RoPE and SwiGLU (pip install 'thinktune[speed]')."
    )

    @model_validator(mode="after")
    def _ewc_needs_fisher(self) -> TrainConfig:
        if self.ewc_lambda and not self.ewc_fisher:
            raise ValueError("ewc_lambda > 0 needs train.ewc_fisher (a fisher.pt from a run with train.save_fisher)")
        return self

    teacher: str | None = Field(None, description="Logit distillation: teacher model reference.")
    distill_alpha: float = Field(0.5, ge=0, le=1, description="Weight of the KL term vs cross-entropy.")
    distill_temperature: float = Field(2.0, gt=0, description="Distillation temperature.")
    unlikelihood_weight: float = Field(0.0, ge=0, description="Repetition unlikelihood auxiliary loss weight.")
    contrastive_weight: float = Field(0.0, ge=0, description="Contrastive margin auxiliary loss weight.")

    @field_validator("loss_chunk_size")
    @classmethod
    def _chunk_positive(cls, v):
        if isinstance(v, int) and v <= 0:
            raise ValueError("must be a positive number of rows, auto, or null")
        return v


class EvalConfig(Section):
    max_new_tokens: int = Field(160, gt=0, description="Generation budget per answer.")
    batch_size: int = Field(32, gt=0, description="Prompts generated together.")
    max_samples: int | None = Field(None, gt=0, description="Evaluate only the first N test records.")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature when do_sample is true.")
    before: bool = Field(True, description="Evaluate the untuned model before training.")
    after: bool = Field(True, description="Evaluate the tuned model after training.")
    metrics: list[str] = Field(
        default_factory=list,
        description="Extra text metrics vs the reference answer: bleu, chrf, rouge, "
        "exact_match, token_f1, embedding_similarity.",
    )
    num_samples: int = Field(1, gt=0, description="Samples per prompt for pass@k / maj@k (sampling when > 1).")
    json_schema: str | None = Field(None, description="JSON schema file the answer must satisfy (format check).")
    lm_eval_chat: Literal["auto", "on", "off"] = Field(
        "auto",
        description="lm-eval-harness tasks (`--lm-eval-tasks`): `on` renders each prompt with the model's chat "
        "template, `data.system_prompt` as system message and `data.thinking` as `enable_thinking`; `off` sends "
        "lm-eval's raw prompts (base models); `auto` = on when the tokenizer has a chat template. Generated "
        "answers are scored on the text after `</think>` either way.",
    )

    @field_validator("lm_eval_chat", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        """YAML reads a bare on/off as a boolean: it means the word."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class ExportConfig(Section):
    formats: list[Literal["merged", "onnx", "int8", "gguf", "gguf-lora", "adapter"]] = Field(
        default_factory=lambda: ["merged"], description="Artefacts `thinktune export` writes."
    )
    gguf_type: Literal["f32", "f16", "bf16", "q8_0", "q4_0"] = Field(
        "q8_0", description="GGUF tensor type (gguf-lora: the base's; the LoRA file is f32 with f32, else f16)."
    )
    onnx_kv_cache: bool = Field(True, description="Export ONNX with past key values (fallback: without).")


class ServeConfig(Section):
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, gt=0, lt=65536, description="Port.")
    api_key: str | None = Field(None, description="Bearer key required on /v1 routes (or THINKTUNE_API_KEY).")
    adapters: dict[str, str] = Field(default_factory=dict, description="Served adapter name → adapter directory.")
    max_batch_size: int = Field(8, gt=0, description="Requests generated together.")
    max_queue: int = Field(64, gt=0, description="Queued requests beyond which the server answers 429.")
    request_timeout: float = Field(120.0, gt=0, description="Seconds before a request is abandoned (504).")
    max_request_bytes: int = Field(1_000_000, gt=0, description="Largest accepted request body.")
    max_tokens_limit: int = Field(2048, gt=0, description="Upper bound on a request's max_tokens.")
    backend: Literal["transformers", "vllm", "llamacpp", "auto"] = Field(
        "transformers",
        description="Generation backend: transformers, vllm (CUDA GPU), llamacpp (a GGUF on the CPU), or auto "
        "(llamacpp on a CPU-only machine with a GGUF at hand and llama-cpp-python installed, else transformers).",
    )
    llamacpp_context: int = Field(
        2048, gt=0, description="backend=llamacpp: KV-cache tokens per sequence (prompt + answer), at most the model's."
    )

    draft_model: str | None = Field(
        None,
        description="Speculative decoding: a smaller model sharing the served model's tokenizer vocabulary (any "
        "model reference) drafts tokens that the served model verifies in one forward pass; greedy output is "
        "unchanged. Requests then run one at a time (transformers' assisted generation takes one sequence).",
    )
    prompt_lookup: int | None = Field(
        None,
        gt=0,
        description="Speculative decoding by prompt lookup: draft up to N tokens copied from where the sequence's "
        "last tokens appeared before (the prompt or the answer so far); no draft model. Requests then run one at "
        "a time.",
    )

    @model_validator(mode="after")
    def _one_speculation(self) -> ServeConfig:
        if self.draft_model and self.prompt_lookup:
            raise ValueError("serve.draft_model and serve.prompt_lookup are two ways to draft tokens: set one")
        if self.backend in ("vllm", "llamacpp") and (self.draft_model or self.prompt_lookup):
            raise ValueError(
                f"serve.draft_model / serve.prompt_lookup run on the transformers backend, not {self.backend} "
                "(vLLM has its own speculative decoding: its --speculative-config)"
            )
        return self

    @property
    def speculative(self) -> bool:
        return bool(self.draft_model or self.prompt_lookup)


PROMETHEUS_DURATION = re.compile(r"((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?")
MATCHER = r'\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*'  # name="value", as PromQL writes it
LABEL_MATCHERS = re.compile(f"{MATCHER}(,{MATCHER})*")


class AlertsConfig(Section):
    """Thresholds of the Prometheus alert rules `thinktune deploy` writes (OUT/alerts.yaml)."""

    p99_latency_seconds: float = Field(
        2.0, gt=0, description="Alert when a pod's P99 request latency on a /v1 generation route is above this."
    )
    latency_for: str = Field("5m", description="How long P99 latency must stay above the threshold (`for:`).")
    memory_share: float = Field(
        0.85, gt=0, le=1, description="Alert when the server's resident memory is above this share of its limit."
    )
    memory_for: str = Field("5m", description="How long memory must stay above its share (`for:`).")
    error_rate: float = Field(
        0.05, gt=0, le=1, description="Alert when this share of a pod's /v1 answers are 5xx errors."
    )
    error_for: str = Field("5m", description="How long the error share must stay above the threshold (`for:`).")
    queue_share: float = Field(
        0.8, gt=0, le=1, description="Alert when waiting requests are above this share of serve.max_queue."
    )
    queue_for: str = Field("2m", description="How long the queue must stay above its share (`for:`).")
    window: str = Field("5m", description="Range the latency and error rules take rates over (rate(...[window])).")
    selector: str = Field(
        "",
        description='Label matchers added to every series, e.g. `namespace="prod",app="quickstart"` '
        "(empty: every thinktune server Prometheus scrapes).",
    )

    @field_validator("latency_for", "memory_for", "error_for", "queue_for", "window")
    @classmethod
    def _duration(cls, value: str, info) -> str:
        if not value or not PROMETHEUS_DURATION.fullmatch(value):
            raise ValueError("expected a Prometheus duration such as 30s, 5m or 1h")
        if info.field_name == "window" and not any(c in "123456789" for c in value):
            raise ValueError("the rate window must be longer than 0")
        return value

    @field_validator("selector")
    @classmethod
    def _matchers(cls, value: str) -> str:
        if value.strip() and not LABEL_MATCHERS.fullmatch(value):
            raise ValueError('expected PromQL label matchers such as namespace="prod",app=~"quick.*"')
        return value.strip()


LossName = Literal["dpo", "ipo", "simpo", "orpo", "kto"]

DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0, "orpo": 0.1, "kto": 0.1}


class DPOConfig(Section):
    loss: LossName = Field("dpo", description="Preference loss: dpo, ipo, simpo, orpo or kto.")
    beta: float | None = Field(
        None, gt=0, description="β (ORPO: λ); default per loss: dpo/ipo/orpo/kto 0.1, simpo 2.0."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="DPO: conservative DPO label noise ε.")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO: target reward margin γ.")
    desirable_weight: float = Field(1.0, gt=0, description="KTO: weight of the chosen (desirable) answers.")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO: weight of the rejected (undesirable) answers.")
    reference: Literal["cached", "live"] = Field(
        "cached", description="Reference log-probs: one pass before training (cached) or every step (live)."
    )

    @property
    def beta_value(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA[self.loss]


Aggregation = Literal["sequence_mean", "token", "dr_grpo"]


class GRPOConfig(Section):
    num_generations: int = Field(4, ge=2, description="G: completions sampled per prompt (one group).")
    max_completion_length: int = Field(128, gt=0, description="Generation budget per completion (tokens).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (also applied to the log-probs).")
    rollout_backend: Literal["hf", "vllm"] = Field(
        "hf",
        description="What samples the completions: `hf` (model.generate; exact resume) or `vllm` (a vLLM engine in "
        "each training process, sharing its GPU, the policy's weights synced before each sampling; CUDA only).",
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, lt=1, description="rollout_backend=vllm: share of the GPU's memory the vLLM engine takes."
    )
    rewards: list[str] = Field(
        default_factory=lambda: ["accuracy", "format"],
        description="Reward functions: accuracy, format, arithmetic, length_penalty, or `pkg.module:function`.",
    )
    reward_weights: list[float] | None = Field(None, description="Weight per reward (default: all 1).")
    epsilon: float = Field(0.2, gt=0, lt=1, description="PPO clip range ε (lower side).")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip range (DAPO clip-higher); default ε.")
    beta: float = Field(0.04, ge=0, description="KL coefficient to the reference policy (0: no reference pass).")
    num_iterations: int = Field(1, ge=1, description="μ: updates per sampled batch.")
    loss_aggregation: Aggregation = Field(
        "sequence_mean", description="sequence_mean (GRPO), token (DAPO), dr_grpo (Dr. GRPO)."
    )
    advantage_eps: float = Field(1e-4, gt=0, description="eps in (r − mean) / (std + eps).")
    dynamic_sampling: bool = Field(
        False,
        description="DAPO dynamic sampling: drop groups whose rewards are all equal and sample more prompts "
        "until the micro-batch is full (or max_resample_rounds is spent).",
    )
    max_resample_rounds: int = Field(
        4, ge=0, description="Extra sampling rounds per micro-batch with dynamic_sampling."
    )
    process_reward: str | None = Field(
        None,
        description="Step reward for process supervision (DeepSeekMath §4.1.3): arithmetic_steps or "
        "`pkg.module:function`; its group-normalised step scores are added to each token's advantage.",
    )
    process_credit: Literal["return", "step"] = Field(
        "return",
        description="Which step scores a token gets: `return` = every step ending after it (DeepSeekMath), "
        "`step` = only the step it belongs to.",
    )

    @model_validator(mode="after")
    def _weights_match(self) -> GRPOConfig:
        if not self.rewards:
            raise ValueError("grpo.rewards: give at least one reward function")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError(
                f"grpo.reward_weights has {len(self.reward_weights)} values for {len(self.rewards)} rewards"
            )
        return self

    @property
    def weights(self) -> list[float]:
        return self.reward_weights or [1.0] * len(self.rewards)


class RunConfig(Section):
    name: str = Field("quickstart", description="Run name; the run directory defaults to `runs/<name>`.")
    output_dir: str | None = Field(None, description="Run directory (default `runs/<name>`).")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    alerts: AlertsConfig = Field(
        default_factory=AlertsConfig, description="`thinktune deploy`: thresholds of the Prometheus alert rules."
    )
    dpo: DPOConfig = Field(
        default_factory=DPOConfig, description="`thinktune dpo`: the preference loss and its settings."
    )
    grpo: GRPOConfig = Field(
        default_factory=GRPOConfig, description="`thinktune grpo`: sampling, rewards and the GRPO loss."
    )

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("runs") / self.name


SECTIONS: dict[str, type[Section]] = {
    "": RunConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "data.rag": RagConfig,
    "method": MethodConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "export": ExportConfig,
    "serve": ServeConfig,
    "alerts": AlertsConfig,
    "dpo": DPOConfig,
    "grpo": GRPOConfig,
}


def quickstart_text() -> str:
    return resources.files("thinktune.configs").joinpath(QUICKSTART).read_text()


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML (quickstart when `path` is None), apply `a.b=value` overrides, validate."""
    if path is None:
        source, text = f"<package>/configs/{QUICKSTART}", quickstart_text()
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        source, text = str(p), p.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}:1: the top level must be a mapping of sections (model, data, train, ...)")
    overridden = {}
    for item in overrides or []:
        overridden[tuple(apply_override(raw, item))] = item
    return validate(raw, source, text, overridden)


def apply_override(raw: dict[str, Any], item: str) -> list[str]:
    """Apply one `--set a.b.c=value` (value parsed as YAML) to the nested dict in place; returns the key path."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.learning_rate=1e-4")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        node[parts[-1]] = value
    return parts


def validate(
    raw: dict[str, Any],
    source: str = "<config>",
    text: str | None = None,
    overridden: dict[tuple[str, ...], str] | None = None,
) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(x) for x in err["loc"] if not isinstance(x, int)]
        field = ".".join(loc)
        line = _line_of(text, list(err["loc"])) if text else None
        where = f"{source}:{line}" if line else source
        for keys, item in (overridden or {}).items():
            if tuple(loc[: len(keys)]) == keys or tuple(keys[: len(loc)]) == tuple(loc):
                where = f"--set {item}"
        if err["type"] == "extra_forbidden":
            section = ".".join(loc[:-1])
            msg = f"unknown key '{field}'"
            hint = closest_key(section, loc[-1])
            if hint:
                msg += f"; did you mean '{hint}'?"
            raise ConfigError(f"{where}: {msg}") from None
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        raise ConfigError(f"{where}: {field}: {err['msg']}{shown}") from None


def closest_key(section: str, key: str) -> str | None:
    model = SECTIONS.get(section)
    if model is None:
        return None
    names = list(model.model_fields)
    match = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    if not match:
        return None
    return f"{section}.{match[0]}" if section else match[0]


def _line_of(text: str, loc: list[Any]) -> int | None:
    """1-based line of the deepest existing node along `loc` in the YAML text (None if not in the file)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if found is None:
                return line
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def field_reference() -> str:
    """Markdown reference of every config key, generated from the pydantic models (used for the README)."""
    lines = []
    for section, model in SECTIONS.items():
        if not section:
            continue
        lines += [f"### `{section}`", "", "| key | default | description |", "|---|---|---|"]
        for name, f in model.model_fields.items():
            default = f.get_default(call_default_factory=True)
            lines.append(f"| `{section}.{name}` | `{default!r}` | {f.description or ''} |")
        lines.append("")
    return "\n".join(lines)


def update_readme_reference(readme: Path) -> None:
    """Rewrite the README section between the config-reference markers from the pydantic models."""
    start, end = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
    text = readme.read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{field_reference()}\n{end}{tail}")


if __name__ == "__main__":  # python -m thinktune.config --reference
    import sys

    if "--reference" in sys.argv:
        update_readme_reference(Path(__file__).parents[1] / "README.md")
    else:
        print(field_reference())
