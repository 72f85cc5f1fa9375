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


@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_heldout_loss_scores_only_answer_positions_and_equals_the_full_logits_loss(tiny, method):
    import torch

    from thinktune.config import MethodConfig
    from thinktune.data.collate import pad_batch
    from thinktune.data.render import tokenize_conversation
    from thinktune.eval.runner import heldout_loss, takes_logits_to_keep
    from thinktune.methods import MethodContext, apply_method

    base, tok = tiny
    model = apply_method(
        AutoModelForCausalLM.from_pretrained(base.config._name_or_path),
        MethodConfig(name=method),
        MethodContext(tok),
    ).eval()
    assert takes_logits_to_keep(model) == (method == "lora")  # virtual tokens: the full-logits path
    tasks = load_tasks("bundled:arithmetic/test", limit=7).records
    samples = [tokenize_conversation(tok, t["messages"], None) for t in tasks]
    with torch.no_grad():  # the reference: each sample alone, transformers' own loss over full logits
        sums = [
            float(model(**pad_batch([s], tok.pad_token_id)).loss) * sum(x != -100 for x in s.labels[1:])
            for s in samples
        ]
    expected = sum(sums) / sum(sum(x != -100 for x in s.labels[1:]) for s in samples)
    assert heldout_loss(model, tok, tasks, None, bs=3) == pytest.approx(expected, rel=1e-5)
