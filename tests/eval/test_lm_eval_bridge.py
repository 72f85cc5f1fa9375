"""The lm-evaluation-harness bridge on a tiny local task (fixtures/lm_eval_tiny), fully offline."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thinktune.errors import ConfigError, EnvironmentProblem
from thinktune.eval.lm_eval_bridge import float_metrics, run_lm_eval, think_end_token

FIXTURES = Path(__file__).parent / "fixtures" / "lm_eval_tiny"
DATA_LINE = "test: tiny_arith.jsonl"
ROOT = Path(__file__).parents[2]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))


@pytest.fixture
def include_dir(tmp_path) -> Path:
    """The fixture task YAMLs with the data file's absolute path filled in (`datasets` resolves against the cwd)."""
    out = tmp_path / "lm_eval_tasks"
    out.mkdir()
    data = (FIXTURES / "tiny_arith.jsonl").resolve()
    for yaml_file in FIXTURES.glob("*.yaml"):
        text = yaml_file.read_text()
        assert DATA_LINE in text
        (out / yaml_file.name).write_text(text.replace(DATA_LINE, f"test: {data}"))
    return out


@pytest.fixture
def llama(tiny_model_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model_dirs["llama"]
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_multiple_choice_and_generate_until(offline, include_dir, llama):
    model, tokenizer = llama
    model.train()
    tasks = ["thinktune_tiny_arith", "thinktune_tiny_arith_gen"]
    results = run_lm_eval(model, tokenizer, tasks, include_path=str(include_dir), batch_size=4)
    assert set(results) == {"thinktune_tiny_arith", "thinktune_tiny_arith_gen"}
    acc = results["thinktune_tiny_arith"]["acc"]
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0
    assert all(isinstance(v, float) for row in results.values() for v in row.values())
    assert 0.0 <= results["thinktune_tiny_arith_gen"]["exact_match,strip"] <= 1.0
    assert model.training  # the bridge gives the model back in the mode it came in


def test_peft_model_and_limit(offline, include_dir, llama):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = llama
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    results = run_lm_eval(peft_model, tokenizer, ["thinktune_tiny_arith"], include_path=str(include_dir), limit=3)
    assert results["thinktune_tiny_arith"]["acc"] in {0.0, 1 / 3, 2 / 3, 1.0}


def test_unknown_task_is_a_config_error(offline, include_dir, llama):
    model, tokenizer = llama
    with pytest.raises(ConfigError, match="thinktune_no_such_task") as err:
        run_lm_eval(model, tokenizer, ["thinktune_no_such_task"], include_path=str(include_dir))
    assert "\n" not in str(err.value)


def test_missing_include_path_is_a_config_error(offline, tmp_path, llama):
    model, tokenizer = llama
    with pytest.raises(ConfigError, match="not a directory"):
        run_lm_eval(model, tokenizer, ["thinktune_tiny_arith"], include_path=str(tmp_path / "nope"))


def test_without_lm_eval_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` raise ImportError
    with pytest.raises(EnvironmentProblem, match=r"^lm-eval-harness bridge needs: pip install lm-eval$"):
        run_lm_eval(object(), object(), ["anything"])


def test_float_metrics_strips_default_filter():
    raw = {"t": {"alias": "t", "sample_len": 8, "acc,none": 0.5, "acc_stderr,none": "N/A", "em,strip": 1}}
    assert float_metrics(raw) == {"t": {"acc": 0.5, "em,strip": 1.0}}


SYSTEM = "You are terse."
THOUGHT = "<think>I guess 99.</think>"
QWEN3_TEMPLATE = Path("/work/shared/templates/qwen3.jinja")


def chat_prompt(tokenizer, question: str, system: str | None = SYSTEM) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": f"Question: {question}\nAnswer:"}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def thinking_llama(tiny_model_dirs):
    """The tiny Llama trained (a few hundred Adam steps) to answer every tiny_arith chat prompt with a think block
    holding a decoy number, then `5`: right only for "What is 2 + 3?"."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model_dirs["llama"]
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    questions = [json.loads(line)["question"] for line in (FIXTURES / "tiny_arith.jsonl").read_text().splitlines()]
    completion = tokenizer(f"{THOUGHT}5<|im_end|>", add_special_tokens=False)["input_ids"]
    rows = []
    for q in questions:
        for system in (SYSTEM, None):
            prompt = tokenizer(chat_prompt(tokenizer, q, system), add_special_tokens=False)["input_ids"]
            rows.append((prompt + completion, [-100] * len(prompt) + completion))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([i + [0] * (width - len(i)) for i, _ in rows])
    labels = torch.tensor([la + [-100] * (width - len(la)) for _, la in rows])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in rows])
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 1e-3:
            break
    model.eval()
    prompt = tokenizer(chat_prompt(tokenizer, questions[0]), return_tensors="pt", add_special_tokens=False)
    out = model.generate(**prompt, max_new_tokens=len(completion), do_sample=False)
    raw = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert raw == f"{THOUGHT}5", raw  # the model really writes a think block before its answer
    return model, tokenizer


def read_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_chat_template_system_prompt_and_think_block_stripped(offline, include_dir, thinking_llama, tmp_path):
    model, tokenizer = thinking_llama
    samples = tmp_path / "samples.jsonl"
    results = run_lm_eval(
        model, tokenizer, ["thinktune_tiny_arith_chat"], str(include_dir), system_prompt=SYSTEM, samples_path=samples
    )
    rows = read_samples(samples)
    assert len(rows) == 8
    first = next(r for r in rows if r["doc_id"] == 0)
    assert first["prompt"] == chat_prompt(tokenizer, "What is 2 + 3?")
    assert first["prompt"].startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n")
    assert first["prompt"].endswith("<|im_start|>assistant\n")
    assert all(r["response"] == ["5"] for r in rows)  # the think block is gone before the filter and metric
    assert first["exact_match"] == 1.0
    assert results["thinktune_tiny_arith_chat"]["exact_match,strip"] == 1 / 8


def test_raw_prompts_when_chat_is_off(offline, include_dir, thinking_llama, tmp_path):
    model, tokenizer = thinking_llama
    samples = tmp_path / "samples.jsonl"
    run_lm_eval(model, tokenizer, ["thinktune_tiny_arith_chat"], str(include_dir), limit=2, chat=False,
                samples_path=samples)  # fmt: skip
    prompts = [r["prompt"] for r in read_samples(samples)]
    assert "Question: What is 2 + 3?\nAnswer:" in prompts
    assert not any("<|im_start|>" in p for p in prompts)


def test_thinking_switch_reaches_the_template(offline, include_dir, llama, tmp_path):
    """data.thinking → the template's enable_thinking (Qwen3's template writes an empty think block when off), also on
    a log-likelihood task, which lm-eval's own enable_thinking flag refuses."""
    model, tokenizer = llama
    tokenizer.chat_template = QWEN3_TEMPLATE.read_text()
    prompts = {}
    for thinking in ("off", "on"):
        samples = tmp_path / f"{thinking}.jsonl"
        run_lm_eval(model, tokenizer, ["thinktune_tiny_arith"], str(include_dir), limit=1, thinking=thinking,
                    samples_path=samples)  # fmt: skip
        prompts[thinking] = read_samples(samples)[0]["prompt"]
    assert prompts["off"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert prompts["on"].endswith("<|im_start|>assistant\n")


def test_chat_on_without_a_template_is_a_config_error(offline, include_dir, llama):
    model, tokenizer = llama
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        run_lm_eval(model, tokenizer, ["thinktune_tiny_arith"], str(include_dir), chat=True)


def test_think_end_token_is_an_id_only_when_one_token(tiny_tokenizer):
    from tokenizers import AddedToken

    assert think_end_token(tiny_tokenizer) == "</think>"  # several BPE pieces: split the decoded text
    tok = copy.deepcopy(tiny_tokenizer)
    tok.add_tokens([AddedToken("</think>", special=True)])
    tid = think_end_token(tok)
    assert isinstance(tid, int) and tok.convert_ids_to_tokens(tid) == "</think>"


def test_cli_bundled_task_raw_and_chat(offline, tiny_model_dirs, tmp_path):
    """`thinktune eval --lm-eval-tasks thinktune_arithmetic`: the bundled task by name; --lm-eval-chat off/on."""
    prompts = {}
    for mode in ("off", "on"):
        out = tmp_path / mode
        r = subprocess.run(
            [sys.executable, "-m", "thinktune", "eval", "--model", str(tiny_model_dirs["llama"]), "--lm-eval-tasks",
             "thinktune_arithmetic", "--max-samples", "1", "--lm-eval-chat", mode, "--set", "data.test=null",
             "--set", f"data.system_prompt={SYSTEM}", "-o", str(out)],
            capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        report = json.loads((out / "report.json").read_text())
        assert set(report["lm_eval"]["thinktune_arithmetic"]) >= {"exact_match,flexible", "exact_match,boxed"}
        prompts[mode] = read_samples(out / "lm_eval_samples.jsonl")[0]["prompt"]
    question = "A bus drives 90 km each hour for 3 hours, then 15 km back. How far is it from the start?"
    assert prompts["off"].startswith(SYSTEM) and question in prompts["off"] and "<|im_start|>" not in prompts["off"]
    assert prompts["on"].startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}")
