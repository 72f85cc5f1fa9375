"""evaluate(): k samples per prompt give pass@k / maj@k; extra text metrics; JSON-schema format check."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from thinktune.config import EvalConfig
from thinktune.errors import ConfigError
from thinktune.eval.runner import evaluate
from thinktune.eval.tasks import load_tasks


@pytest.fixture(scope="module")
def tiny(tiny_model_dirs):
    d = tiny_model_dirs["llama"]
    return AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d)


def test_k_samples_give_pass_and_maj_at_k(tiny):
    model, tok = tiny
    tasks = load_tasks("bundled:arithmetic/test", limit=3).records
    r = evaluate(model, tok, tasks, EvalConfig(num_samples=3, max_new_tokens=4, batch_size=4))
    assert {"pass@3", "maj@3"} <= set(r.headline())
    assert all(len(s["samples"]) == 3 for s in r.samples)
    assert 0 <= r.extra["pass@3"] <= 1


def test_text_metrics_against_reference_answers(tiny):
    model, tok = tiny
    tasks = load_tasks("bundled:arithmetic/test", limit=2).records
    r = evaluate(model, tok, tasks, EvalConfig(metrics=["exact_match", "chrf"], max_new_tokens=4))
    assert "exact_match" in r.extra and "chrf" in r.extra


def test_unknown_metric_is_a_config_error(tiny):
    model, tok = tiny
    tasks = load_tasks("bundled:arithmetic/test", limit=1).records
    with pytest.raises(ConfigError, match="unknown metric"):
        evaluate(model, tok, tasks, EvalConfig(metrics=["blue"], max_new_tokens=2))


def test_json_schema_is_part_of_format_compliance(tiny, tmp_path):
    model, tok = tiny
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "required": ["answer"]}))
    tasks = load_tasks("bundled:arithmetic/test", limit=2).records
    r = evaluate(model, tok, tasks, EvalConfig(json_schema=str(schema), max_new_tokens=3))
    assert r.format_compliance == 0.0  # random tiny model never writes valid JSON
    with pytest.raises(ConfigError, match="not found"):
        evaluate(model, tok, tasks, EvalConfig(json_schema=str(tmp_path / "nope.json"), max_new_tokens=2))
