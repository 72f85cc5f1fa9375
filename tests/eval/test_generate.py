"""eval/generate.py: a merged LoRA generates what the unmerged one does and is unmerged after; token counting."""

from __future__ import annotations

import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

from thinktune.eval.generate import GenerationStats, generate_batch, merged_for_inference


def lora(tiny_model_dirs):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    return model.eval()


def test_a_merged_lora_generates_what_the_unmerged_one_does(tiny_model_dirs, tiny_tokenizer):
    model = lora(tiny_model_dirs)
    prompts = ["hello there", "a b c d e f", "one"]
    want = generate_batch(model, tiny_tokenizer, prompts, 12)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with merged_for_inference(model) as merged:
        assert any(getattr(m, "merged", False) for m in merged.modules())
        assert generate_batch(merged, tiny_tokenizer, prompts, 12) == want
    assert not any(getattr(m, "merged", False) for m in model.modules())
    for n, p in model.named_parameters():  # unmerged: the weights are back (to float rounding)
        assert torch.allclose(p, before[n], atol=1e-6), n


def test_models_without_a_mergeable_adapter_are_used_as_they_are(tiny_model_dirs):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
    with merged_for_inference(base) as m:
        assert m is base
    prompt = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    with merged_for_inference(prompt) as m:
        assert m is prompt


def test_generation_stats_count_tokens_and_time(tiny_model_dirs, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]).eval()
    stats = GenerationStats()
    out = generate_batch(model, tiny_tokenizer, ["hello", "a b c"], 8, stats=stats)
    out += generate_batch(model, tiny_tokenizer, ["one two"], 8, stats=stats)
    assert stats.tokens == sum(n for _, n in out) > 0 and stats.seconds > 0 and stats.tokens_per_second > 0
