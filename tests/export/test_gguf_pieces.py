"""Pure pieces of the GGUF export: Q/K permutation, tensor types, Ollama Modelfile."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from tests.tiny_models import CHATML_TEMPLATE
from thinktune.export.gguf_file import permute_qk, tensor_type
from thinktune.export.modelfile import default_system_prompt, is_chatml, modelfile_text, ollama_chat


def test_permute_qk_is_undone_by_transformers_gguf_loader():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)  # 8 heads of 16 rows
    restored = LlamaTensorProcessor(config={"num_attention_heads": 8, "num_key_value_heads": 8}).process(
        permute_qk(weight, 8), "blk.0.attn_q.weight"
    )
    assert not np.array_equal(permute_qk(weight, 8), weight)
    np.testing.assert_array_equal(restored.weights, weight)


@pytest.mark.parametrize(
    ("name", "shape", "target", "has_output", "expected"),
    [
        ("blk.0.attn_norm.weight", (64,), Q.Q4_0, True, Q.F32),
        ("blk.0.attn_q.weight", (64, 64), Q.Q4_0, True, Q.Q4_0),
        ("output.weight", (512, 64), Q.Q4_0, True, Q.Q8_0),
        ("token_embd.weight", (512, 64), Q.Q4_0, False, Q.Q8_0),  # tied: the embedding is the LM head
        ("token_embd.weight", (512, 64), Q.Q4_0, True, Q.Q4_0),
        ("output.weight", (512, 64), Q.Q4_1, True, Q.Q8_0),
        ("blk.0.ffn_down.weight", (64, 100), Q.Q8_0, True, Q.F16),  # 100 is not a multiple of 32
        ("blk.0.ffn_down.weight", (64, 100), Q.BF16, True, Q.BF16),
    ],
)
def test_tensor_types(name, shape, target, has_output, expected):
    assert tensor_type(name, np.zeros(shape, np.float32), target, has_output) == expected


SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>{% endfor %}"


@pytest.mark.parametrize(
    ("template", "family", "system"),
    [
        (CHATML_TEMPLATE, "chatml", None),
        (SMOL_TEMPLATE, "chatml", "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
        (LLAMA3_TEMPLATE, None, None),
        (None, None, None),
    ],
)
def test_modelfile(template, family, system):
    """The real templates, rendered by Go as Ollama does: tests/export/test_modelfile_ollama.py."""
    text = modelfile_text("m-q8_0.gguf", template, ["<|im_end|>", '"quoted"', "<|im_end|>"])
    chat = ollama_chat(template)
    assert text.startswith("FROM ./m-q8_0.gguf\n")
    assert (chat and chat.family) == family and ("TEMPLATE" in text) is bool(family)
    assert is_chatml(template) is bool(family)
    assert default_system_prompt(template) == system and (f'SYSTEM """{system}"""' in text) is bool(system)
    # Ollama's parser drops the outer quotes and unescapes nothing: an inner `"` is written as it is
    assert text.count('PARAMETER stop "<|im_end|>"') == 1 and 'PARAMETER stop ""quoted""' in text
    assert ('PARAMETER stop "<|im_start|>"' in text) is bool(family)  # the turn marker, as Ollama's own Modelfiles
