"""GGUF exports judged by llama.cpp itself (llama-cpp-python, installed by `make test` from the `llama` extra).

Each export runs with `check_with=("llama-cpp",)`: llama.cpp loads the file, tokenises the rendered prompts, computes
their logits and continues them greedily; the figures must match the merged PyTorch model's.
"""

from __future__ import annotations

import json
from pathlib import Path

import llama_cpp  # noqa: F401  (fail, not skip, where the extra is missing: these tests are the proof)
import pytest
import torch
from typer.testing import CliRunner

from thinktune.cli import app
from thinktune.config import ModelConfig
from thinktune.eval.reasoning import parse_output
from thinktune.eval.tasks import load_tasks
from thinktune.export import ExportOptions, run_export
from thinktune.export import llama_cpp_check as lcc
from thinktune.export.parity import torch_greedy
from thinktune.export.source import load_source, stop_ids
from thinktune.models import resolve_model

CHECKED = ExportOptions(max_new_tokens=8, check_with=("llama-cpp",))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_f16_tiny_model_and_lora_in_llama_cpp(export_models, tmp_path, arch):
    model_dir, adapter = export_models[arch]
    record = run_export(
        ModelConfig(name_or_path=str(model_dir)), "gguf", tmp_path, CHECKED.but(gguf_type="f16"), adapter
    )
    seen = record["llama_cpp"]
    assert seen["runtime"].startswith("llama-cpp-python")
    assert seen["tokenizer_identical"], "llama.cpp tokenises the rendered prompts differently"
    assert seen["max_abs_logit_diff"] < 0.02 and seen["top1_agreement"] == 1.0, seen  # f16 rounding only
    assert seen["greedy"]["identical"] == 1.0, seen
    assert record["verified"]


def test_qwen3_moe_f16_in_llama_cpp(tiny_model_dirs, tmp_path):
    record = run_export(
        ModelConfig(name_or_path=str(tiny_model_dirs["qwen3_moe"])), "gguf", tmp_path, CHECKED.but(gguf_type="f16")
    )
    seen = record["llama_cpp"]
    assert seen["tokenizer_identical"] and seen["top1_agreement"] == 1.0 and seen["greedy"]["identical"] == 1.0, seen
    assert seen["max_abs_logit_diff"] < 0.02


def test_check_with_llama_cpp_from_the_cli(export_models, tmp_path):
    model_dir, adapter = export_models["qwen3"]
    out = tmp_path / "gguf"
    args = ["export", "--model", str(model_dir), "--adapter", str(adapter), "--format", "gguf", "--gguf-type", "q8_0"]
    result = CliRunner().invoke(app, [*args, "--check-with", "llama-cpp", "-o", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "check llama_cpp.top1_agreement" in result.output and "llama cpp runtime" in result.output
    record = json.loads((out / "verify.json").read_text())
    figures = {row["figure"]: row for row in record["checks"]}
    assert figures["llama_cpp.tokenizer_identical"]["passed"] and figures["llama_cpp.top1_agreement"]["passed"]


def test_llama_cpp_refuses_a_broken_file_in_one_line(export_models, tmp_path):
    model_dir, _ = export_models["llama"]
    record = run_export(ModelConfig(name_or_path=str(model_dir)), "gguf", tmp_path, ExportOptions(max_new_tokens=4))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(open(record["artefact"], "rb").read()[:4096])
    with pytest.raises(Exception, match="llama.cpp refuses the file") as e:
        with lcc.load(broken, 64):
            pass
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def smollm2_lora(tmp_path_factory):
    """SmolLM2 with a small random LoRA on every linear layer (B scaled so the model stays fluent)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = resolve_model("smollm2-135m-instruct").path
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    peft = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05)
    out = tmp_path_factory.mktemp("smollm2") / "lora"
    peft.save_pretrained(out)
    return base, out


@pytest.mark.slow
def test_smollm2_lora_f16_same_greedy_tokens_in_llama_cpp(smollm2_lora, tmp_path):
    base, adapter = smollm2_lora
    options = ExportOptions(gguf_type="f16", max_new_tokens=24, check_with=("llama-cpp",))
    record = run_export(ModelConfig(name_or_path=str(base)), "gguf", tmp_path, options, adapter)
    seen = record["llama_cpp"]
    assert record["tokenizer_pre"] == "smollm" and record["tokenizer_pre_identified_by"] == "checksum"
    assert seen["tokenizer_identical"] and seen["greedy"]["identical"] == 1.0, seen
    assert seen["top1_agreement"] > 0.98, seen


@pytest.mark.slow
def test_smollm2_lora_as_a_llama_cpp_lora_file(smollm2_lora, tmp_path):
    """The same adapter kept apart from the base: llama.cpp applies the LoRA file to the f16 base GGUF at load."""
    base, adapter = smollm2_lora
    options = ExportOptions(gguf_type="f16", max_new_tokens=24)
    record = run_export(ModelConfig(name_or_path=str(base)), "gguf-lora", tmp_path, options, adapter)
    seen = record["llama_cpp"]
    assert seen["tokenizer_identical"] and seen["greedy"]["identical"] == 1.0, seen
    assert seen["top1_agreement"] > 0.98 and record["verified"], seen
    assert record["bytes"] < 0.1 * Path(record["base_gguf"]).stat().st_size


@pytest.mark.slow
def test_smollm2_q8_0_keeps_the_answers_on_the_bundled_task(tmp_path):
    """SmolLM2's greedy solutions to bundled test problems, read by llama.cpp from the q8_0 file (teacher-forced):
    llama.cpp must predict the same next token along the solution, and the very tokens of the final answer."""
    tasks = load_tasks("bundled:arithmetic/test", limit=6).records
    model_cfg = ModelConfig(name_or_path=str(resolve_model("smollm2-135m-instruct").path))
    record = run_export(model_cfg, "gguf", tmp_path, ExportOptions(gguf_type="q8_0", max_new_tokens=4))
    source = load_source(model_cfg)
    tok = source.tokenizer
    rendered = [tok.apply_chat_template(t["prompt"], add_generation_prompt=True, tokenize=False) for t in tasks]
    prompts = [tok(r, add_special_tokens=False)["input_ids"] for r in rendered]
    solutions = [torch_greedy(source.model, x, 40, stop_ids(tok, source.model)) for x in prompts]
    agree, answers_kept = [], 0
    n_ctx = max(map(len, prompts)) + max(map(len, solutions)) + 8
    with lcc.load(Path(record["artefact"]), n_ctx) as llm:
        for prompt, solution in zip(prompts, solutions, strict=True):
            logits = lcc.prompt_logits(llm, prompt + solution)
            predicted = logits[len(prompt) - 1 : -1].argmax(-1).tolist()  # the token after each prefix
            agree += [p == s for p, s in zip(predicted, solution, strict=True)]
            span = answer_tokens(tok, solution)
            answers_kept += all(predicted[i] == solution[i] for i in span)
    assert sum(agree) / len(agree) >= 0.95, sum(agree) / len(agree)
    assert answers_kept == len(tasks), answers_kept


def answer_tokens(tok, solution: list[int]) -> list[int]:
    """Positions of the tokens that spell the final answer (its last occurrence in the decoded solution)."""
    text = tok.decode(solution, skip_special_tokens=True)
    answer = parse_output(text).answer
    assert answer, text
    begin = text.rindex(answer)
    ends = [len(tok.decode(solution[: i + 1], skip_special_tokens=True)) for i in range(len(solution))]
    return [i for i, end in enumerate(ends) if end > begin and (i == 0 or ends[i - 1] < begin + len(answer))]
