"""The lm-evaluation-harness bridge on a tiny local task (fixtures/lm_eval_tiny), fully offline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from thinktune.errors import ConfigError, EnvironmentProblem
from thinktune.eval.lm_eval_bridge import float_metrics, run_lm_eval

FIXTURES = Path(__file__).parent / "fixtures" / "lm_eval_tiny"
DATA_LINE = "test: tiny_arith.jsonl"


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
