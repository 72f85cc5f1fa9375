"""Text metrics over (predictions, references): BLEU, chrF, ROUGE, exact match, token F1, embedding similarity.

`METRICS` maps a name to a `Metric`; `compute_metrics(names, predictions, references)` runs several at once.
Each metric returns `Scores`: corpus-level floats, plus one value per sample where a per-sample score means something.
Scales follow the library that computes them: BLEU and chrF 0–100 (sacrebleu), everything else 0–1.

Chinese / Japanese text has no spaces between words, so CJK characters are one token each (sacrebleu's `zh`
tokenizer, a character tokenizer for ROUGE and token F1). Adding a metric = one function + one `METRICS` line.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import fmean

from thinktune.errors import ConfigError
from thinktune.rag.embedding import embed

# Hiragana, Katakana, Han ideographs (incl. extension A, compatibility, extension B+).
CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
CJK = re.compile(f"[{CJK_CHARS}]")


@dataclass(frozen=True)
class Scores:
    corpus: dict[str, float]
    per_sample: dict[str, list[float]] = field(default_factory=dict)  # same keys as corpus, one value per prediction


@dataclass(frozen=True)
class Metric:
    name: str
    compute: Callable[[list[str], list[str]], Scores]
    description: str
    needs_references: bool = True


def has_cjk(texts: Sequence[str]) -> bool:
    return any(CJK.search(t) for t in texts)


def bleu(predictions: list[str], references: list[str]) -> Scores:
    from sacrebleu.metrics import BLEU

    scorer = BLEU(tokenize="zh" if has_cjk(references) else "13a")
    return Scores({"bleu": scorer.corpus_score(predictions, [references]).score})


def chrf(predictions: list[str], references: list[str]) -> Scores:
    from sacrebleu.metrics import CHRF

    scorer = CHRF()  # character n-grams: works for CJK text as it is
    per = [scorer.sentence_score(p, [r]).score for p, r in zip(predictions, references, strict=True)]
    return Scores({"chrf": scorer.corpus_score(predictions, [references]).score}, {"chrf": per})


class CJKWordTokenizer:
    """Tokenizer for rouge-score: one token per CJK character, other words as they are, lowercased.

    rouge-score's default tokenizer keeps only [a-z0-9] runs, so Chinese text scores 0. On ASCII text this one gives
    the same tokens as the default (without stemming).
    """

    pattern = re.compile(f"[{CJK_CHARS}]|[^\\W_]+")

    def tokenize(self, text: str) -> list[str]:
        return self.pattern.findall(text.lower())


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(predictions: list[str], references: list[str]) -> Scores:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=CJKWordTokenizer())
    per: dict[str, list[float]] = {t: [] for t in ROUGE_TYPES}
    for p, r in zip(predictions, references, strict=True):
        result = scorer.score(r, p)  # score(target, prediction)
        for t in ROUGE_TYPES:
            per[t].append(result[t].fmeasure)
    return Scores({t: _mean(v) for t, v in per.items()}, per)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation (Rajpurkar et al. 2016): lowercase, drop punctuation and articles, squeeze whitespace."""
    s = unicodedata.normalize("NFKC", s).lower()
    s = "".join(" " if c in string.punctuation or unicodedata.category(c).startswith("P") else c for c in s)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def answer_tokens(s: str) -> list[str]:
    """Normalised tokens: whitespace-separated words, each CJK character on its own."""
    return re.findall(f"[{CJK_CHARS}]|[^\\s{CJK_CHARS}]+", normalize_answer(s))


def exact_match(predictions: list[str], references: list[str]) -> Scores:
    per = [float(answer_tokens(p) == answer_tokens(r)) for p, r in zip(predictions, references, strict=True)]
    return Scores({"exact_match": _mean(per)}, {"exact_match": per})


def token_f1_one(prediction: str, reference: str) -> float:
    pred, ref = answer_tokens(prediction), answer_tokens(reference)
    if not pred or not ref:  # SQuAD v2: an empty side scores 1 only when both are empty
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(predictions: list[str], references: list[str]) -> Scores:
    per = [token_f1_one(p, r) for p, r in zip(predictions, references, strict=True)]
    return Scores({"token_f1": _mean(per)}, {"token_f1": per})


def embedding_similarity(predictions: list[str], references: list[str]) -> Scores:
    """BERTScore in spirit (Zhang et al. 2020), at sentence level: cosine of whole-sentence embeddings."""
    if not predictions:
        return Scores({"embedding_similarity": 0.0}, {"embedding_similarity": []})
    pred, ref = embed(predictions), embed(references)
    per = [float(x) for x in (pred * ref).sum(-1)]
    return Scores({"embedding_similarity": _mean(per)}, {"embedding_similarity": per})


def _mean(values: list[float]) -> float:
    return fmean(values) if values else 0.0


METRICS: dict[str, Metric] = {
    "bleu": Metric("bleu", bleu, "corpus BLEU, sacrebleu (0-100)"),
    "chrf": Metric("chrf", chrf, "chrF character n-gram F-score, sacrebleu (0-100)"),
    "rouge": Metric("rouge", rouge, "ROUGE-1/2/L F-measure, rouge-score (0-1)"),
    "exact_match": Metric("exact_match", exact_match, "SQuAD-normalised exact match (0-1)"),
    "token_f1": Metric("token_f1", token_f1, "SQuAD token-overlap F1 (0-1)"),
    "embedding_similarity": Metric(
        "embedding_similarity", embedding_similarity, "cosine of all-MiniLM-L6-v2 sentence embeddings (0-1)"
    ),
}


def compute_metrics(
    names: Sequence[str], predictions: list[str], references: Sequence[str | None] | None
) -> dict[str, Scores]:
    """Run the named metrics; the result is keyed by metric name. Raises ConfigError for an unknown name or for a
    reference metric on data without references."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric {unknown[0]!r}; valid metrics: {', '.join(METRICS)}")
    results: dict[str, Scores] = {}
    for name in names:
        metric = METRICS[name]
        refs: list[str] = []
        if metric.needs_references:
            refs = _checked_references(name, predictions, references)
        results[name] = metric.compute(list(predictions), refs)
    return results


def _checked_references(name: str, predictions: list[str], references: Sequence[str | None] | None) -> list[str]:
    missing = len(predictions) if references is None else sum(1 for r in references if r is None or not r.strip())
    if references is None or (predictions and (not references or missing == len(references))):
        raise ConfigError(f"metric {name!r} needs references; the data has none")
    if len(references) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if missing:
        raise ConfigError(
            f"metric {name!r} needs a reference for every sample; {missing} of {len(references)} have none"
        )
    return [str(r) for r in references]


def perplexity_from_loss(loss: float | None) -> float | None:
    """exp(mean cross-entropy in nats). None when there is no loss or it is too large to mean anything (≥ 50)."""
    if loss is None or not math.isfinite(loss) or loss >= 50:
        return None
    return math.exp(loss)
