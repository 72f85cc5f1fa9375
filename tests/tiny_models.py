"""Tiny, deterministic, offline-built causal LMs and tokenizer for tests.

Nothing here touches the Hugging Face hub: the tokenizer is a ByteLevel BPE
trained in-memory on a small built-in corpus, and the models are randomly
initialised from transformers config classes.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    DeepseekV3Config,
    GenerationConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3MoeConfig,
)

__all__ = [
    "TINY_ARCHS",
    "SPECIAL_TOKENS",
    "CHATML_TEMPLATE",
    "build_tiny_tokenizer",
    "build_tiny_model",
    "tiny_config",
]

TINY_ARCHS = ["llama", "qwen3", "qwen3_moe", "deepseek_v3"]

# Order fixes the ids: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

TARGET_VOCAB_SIZE = 512

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. Please reason step by step.",
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "<think>\nLet me think about this problem carefully.\n</think>\n\nThe answer is \\boxed{42}.",
    "<think>\n3 + 4 = 7\n</think>\n\nThe answer is \\boxed{7}.",
    "<think>\n12 * 3 = 36, then 36 - 6 = 30.\n</think>\n\nSo the answer is \\boxed{30}.",
    "Tom has 5 apples. He buys 3 more apples. How many apples does Tom have now?",
    "Sara had 20 dollars. She spent 8 dollars on a book. How much money does she have left?",
    "A train travels 60 miles per hour for 2 hours. How far does it travel?",
    "There are 7 days in a week. How many days are in 3 weeks?",
    "If x + 2 = 10, what is x? We subtract 2 from both sides: x = 8.",
    "The sum of 15 and 27 is 42. The product of 6 and 7 is 42.",
    "First, we compute the total. Then we divide by the number of people.",
    "Therefore, the final answer is 12. Wait, let me double check: 4 * 3 = 12. Yes.",
    "Question: What is 9 squared? Answer: 81.",
    "user assistant system user assistant system",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000 3.14 1/2 -5",
    "+ - * / = < > ( ) [ ] { } ^ % $ # @ ! ? , . ; : ' \" \\ | _ ~ `",
    "\\frac{1}{2} \\sqrt{16} = 4 \\times \\cdot \\boxed{} $x^2$",
    "Hello, world! How are you today? I am fine, thank you.",
    "In the morning she walks to school, and in the evening she reads a story.",
]


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the corpus so frequencies are meaningful; training is deterministic.
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Deterministic ByteLevel-BPE fast tokenizer with ChatML chat template."""
    tok = Tokenizer.from_str(_tokenizer_json())
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=["<|im_start|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    hf.chat_template = CHATML_TEMPLATE
    return hf


def tiny_config(arch: str, tokenizer: PreTrainedTokenizerFast | None = None):
    """Return a tiny transformers config for ``arch``."""
    if tokenizer is None:
        tokenizer = build_tiny_tokenizer()
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # No bos token is added by the tokenizer; reuse <|endoftext|> as nominal bos.
        bos_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        return LlamaConfig(**common, head_dim=16)
    if arch == "qwen3":
        return Qwen3Config(**common, head_dim=16)  # default head_dim is 128!
    if arch == "qwen3_moe":
        return Qwen3MoeConfig(
            **common,
            head_dim=16,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            decoder_sparse_step=1,
            norm_topk_prob=True,
        )
    if arch == "deepseek_v3":
        # MLA in transformers needs as many KV heads as attention heads (as in the real DeepSeek-V3).
        return DeepseekV3Config(
            **{**common, "num_key_value_heads": common["num_attention_heads"]},
            moe_intermediate_size=32,
            q_lora_rank=32,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            routed_scaling_factor=1.0,
        )
    raise ValueError(f"unknown tiny arch {arch!r}; expected one of {TINY_ARCHS}")


def build_tiny_model(arch: str, out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny random float32 causal LM + tokenizer and save to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(arch, tokenizer)

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_vl_model(out_dir: Path, tokenizer_dir: Path, gguf_file: str, seed: int = 0) -> Path:
    """A tiny random Qwen2.5-VL (vision tower + language model, ~20M parameters, most of them the 152k-token
    embedding) with the real Qwen2 tokenizer of `tokenizer_dir/gguf_file` (../shared/templates: it has
    <|vision_start|>, <|image_pad|>, <|vision_end|>) and a PIL image processor; saved to ``out_dir``."""
    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, gguf_file=gguf_file)
    text = {
        "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 4]},
    }  # fmt: skip
    vision = {
        "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
        "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "fullatt_block_indexes": [1],
        "window_size": 56,
    }  # fmt: skip
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(out_dir)
    return Path(out_dir)
