"""Leak-free splits, balancing weights, and augmentation (template variation, paraphrase hook)."""

from __future__ import annotations

import copy
import random

import pytest

from thinktune.data.augment import back_translate, model_generate_fn, paraphrase, vary_templates
from thinktune.data.balance import sample_weights
from thinktune.data.dedup import duplicate_clusters
from thinktune.data.reading import read_records
from thinktune.data.records import prompt_text
from thinktune.data.split import parse_ratios, split_records


def rec(user: str, answer: str = "ok", **meta) -> dict:
    return {
        "messages": [
            {"role": "user", "content": user, "reasoning": None},
            {"role": "assistant", "content": answer, "reasoning": None},
        ],
        "meta": {"source": "d.jsonl", "line": 1, **meta},
    }


@pytest.mark.parametrize(
    ("text", "ratios"),
    [
        ("0.9", {"train": 0.9, "test": pytest.approx(0.1)}),
        ("train=0.8,validation=0.1,test=0.1", {"train": 0.8, "validation": 0.1, "test": 0.1}),
        ("a=2,b=2", {"a": 0.5, "b": 0.5}),
    ],
)
def test_parse_ratios(text, ratios):
    assert parse_ratios(text) == ratios


@pytest.mark.parametrize("text", ["1.5", "0", "train=x", "a=-1,b=2", "=0.5"])
def test_parse_ratios_bad(text):
    with pytest.raises(ValueError, match="--ratio"):
        parse_ratios(text)


def _family(i: int) -> list[dict]:
    """A problem and two near-copies of it (names changed, one extra word)."""
    base = (
        f"Problem {i}: a farmer has {i * 3 + 7} sheep in the north field and {i + 2} goats in the south field; "
        "after the market day he sells half of the sheep and buys as many goats again. How many animals now? "
        "Write down every step of the computation, check the arithmetic twice, and give the final count of "
        "all the animals on the farm as a single number at the very end of your answer."
    )
    return [rec(base, fam=i), rec(base.upper() + " Thanks!", fam=i), rec("Please: " + base + " Explain.", fam=i)]


def test_split_keeps_near_duplicates_together():
    records = [r for i in range(60) for r in _family(i)]
    random.Random(0).shuffle(records)
    result = split_records(records, {"train": 0.8, "test": 0.2}, seed=1)
    train, test = result.splits["train"], result.splits["test"]
    assert len(train) + len(test) == len(records)
    assert abs(len(test) / len(records) - 0.2) < 0.03
    # no cluster of near-duplicates straddles the splits
    clusters = duplicate_clusters([prompt_text(r) for r in train + test], 0.85)
    train_clusters, test_clusters = set(clusters[: len(train)]), set(clusters[len(train) :])
    assert not train_clusters & test_clusters
    families = {name: {r["meta"]["fam"] for r in part} for name, part in result.splits.items()}
    assert not families["train"] & families["test"]
    assert result.clusters <= 60  # (problems differing only in their numbers may be near-duplicates too)
    # deterministic for a seed, different for another
    again = split_records(records, {"train": 0.8, "test": 0.2}, seed=1)
    assert again.splits["test"] == test
    assert split_records(records, {"train": 0.8, "test": 0.2}, seed=2).splits["test"] != test


def test_split_by_field_groups_values():
    records = [rec(f"distinct question number {i} about topic {i % 7}", topic=f"t{i % 7}") for i in range(70)]
    result = split_records(records, {"train": 0.7, "test": 0.3}, by="topic", near_dup_threshold=None)
    topics = {name: {r["meta"]["topic"] for r in part} for name, part in result.splits.items()}
    assert not topics["train"] & topics["test"]
    assert result.clusters == 7 and len(result.splits["test"]) in (20, 30)


def test_split_bundled_without_prompt_overlap():
    records = read_records("bundled:arithmetic/train").records
    result = split_records(records, parse_ratios("0.9"))
    train = {prompt_text(r) for r in result.splits["train"]}
    assert not train & {prompt_text(r) for r in result.splits["test"]}


@pytest.mark.parametrize(
    ("labels", "weights", "expected"),
    [
        (["a", "a", "a", "b"], None, [2 / 3, 2 / 3, 2 / 3, 2.0]),  # each category half of the draws
        (["a", "b"], None, [1.0, 1.0]),
        (["a", "a", "b"], {"a": 3, "b": 1}, [1.5 * 3 / 4 * 2 / 2, 1.5 * 3 / 4 * 2 / 2, 0.75]),
        (["a", "b", None], {"a": 1, "b": 0}, [1.5, 0.0, 1.5]),  # unlisted (missing) gets 1.0
        ([], None, []),
    ],
)
def test_sample_weights(labels, weights, expected):
    records = [rec("q", **({} if label is None else {"cat": label})) for label in labels]
    got = sample_weights(records, "cat", weights)
    assert got == pytest.approx(expected)
    if got:
        assert sum(got) == pytest.approx(len(got))  # the epoch length is kept


def test_sample_weights_shares():
    """Drawn with the weights, each category's total share is what was asked (here 3:1)."""
    records = [rec("q", cat="a")] * 90 + [rec("q", cat="b")] * 10
    w = sample_weights(records, "meta.cat", {"a": 3, "b": 1})
    assert sum(w[:90]) / sum(w) == pytest.approx(0.75)


def test_sample_weights_errors():
    with pytest.raises(ValueError, match="has weight 0"):
        sample_weights([rec("q", cat="a")], "cat", {"a": 0})
    with pytest.raises(ValueError, match=">= 0"):
        sample_weights([rec("q", cat="a")], "cat", {"a": -1})


def test_vary_templates_is_pure_and_seeded():
    records = [rec(f"question {i}") for i in range(200)]
    before = copy.deepcopy(records)
    a = vary_templates(records, 0.3, seed=5)
    assert records == before  # inputs untouched
    assert a == vary_templates(records, 0.3, seed=5)
    assert a != vary_templates(records, 0.3, seed=6)
    changed = [x for x in a if x["meta"].get("augmented", "").startswith("template:")]
    assert 40 <= len(changed) <= 80
    for x, orig in zip(a, records, strict=True):
        assert orig["messages"][0]["content"] in x["messages"][0]["content"]
        assert x["messages"][1] == orig["messages"][1]  # answers never change
    assert vary_templates(records, 0.0, 1) == records
    assert all("augmented" in x["meta"] for x in vary_templates(records, 1.0, 1, ["Q: {prompt}"]))


def test_paraphrase_hook():
    records = [rec("What is 2 + 2?"), rec("Name a colour."), rec("unchanged")]
    calls = []

    def fake(prompts: list[str]) -> list[str]:
        calls.append(prompts)
        return ["<think>hmm</think>How much is 2 plus 2?", "", "unchanged"]

    out = paraphrase(records, fake)
    assert len(calls) == 1 and "What is 2 + 2?" in calls[0][0]
    assert out[0]["messages"][0]["content"] == "How much is 2 plus 2?" and out[0]["meta"]["augmented"] == "paraphrase"
    assert out[1] is records[1] and out[2] is records[2]  # empty or identical rewrites keep the original
    with pytest.raises(ValueError, match="returned 1 texts for 3 prompts"):
        paraphrase(records, lambda p: ["x"])


def test_back_translation_round_trip():
    def fake(prompts: list[str]) -> list[str]:
        out = []
        for p in prompts:
            text = p.rsplit("\n\n", 1)[1]
            out.append(f"FR[{text}]" if "into French" in p else text.removeprefix("FR[").removesuffix("]") + "!")
        return out

    out = back_translate([rec("Hello there")], fake)
    assert out[0]["messages"][0]["content"] == "Hello there!"
    assert out[0]["meta"]["augmented"] == "back-translation:French"


def test_model_generate_fn_with_tiny_model(tiny_model_dirs, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]).eval()
    generate = model_generate_fn(model, tiny_tokenizer, max_new_tokens=6)
    replies = generate(["Tom has 5 apples.", "Hello, world! How are you today?"])
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    out = paraphrase([rec("Tom has 5 apples.")], generate)
    assert out[0]["messages"][1] == rec("x")["messages"][1]


def test_balance_by_modality_reaches_a_text_to_image_ratio():
    """`modality` needs no field: records with images are `image`, the rest `text`; shares 3:1 draw them 3:1."""
    import random

    recs = [{"messages": [], "meta": {}}] * 10 + [{"messages": [], "images": ["a.png"], "meta": {}}] * 30
    weights = sample_weights(recs, "modality", {"text": 3, "image": 1})
    draws = random.Random(0).choices(range(len(recs)), weights=weights, k=40_000)
    image_share = sum(1 for i in draws if recs[i].get("images")) / len(draws)
    assert image_share == pytest.approx(0.25, abs=0.01)
    own = {"messages": [], "images": ["a.png"], "meta": {"modality": "diagram"}}  # a record's own label wins
    assert sample_weights([own, recs[0]], "modality") == [1.0, 1.0]
