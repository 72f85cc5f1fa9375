"""Cleaning rules, PII anonymisation and duplicate detection: each removal names its rule and the record."""

from __future__ import annotations

import pytest

from thinktune.data.cleaning import Cleaner, clean_records, encoding_problem, quality_problem, repeated_ngram_ratio
from thinktune.data.dedup import NearDuplicateIndex, duplicate_clusters, exact_key, shingles
from thinktune.data.language import detect_script
from thinktune.data.pii import anonymise, iban_valid, luhn_valid
from thinktune.data.reading import Reject, read_records
from thinktune.data.spec import CleaningConfig

LONG = (
    "First we read the problem and note every quantity that is given to us. Then we decide which operation "
    "combines them, carry it out carefully, and check the result against the question before answering it."
)


def rec(user: str, answer: str, reasoning: str | None = None, line: int = 1) -> dict:
    return {
        "messages": [
            {"role": "user", "content": user, "reasoning": None},
            {"role": "assistant", "content": answer, "reasoning": reasoning},
        ],
        "meta": {"source": "d.jsonl", "line": line},
    }


@pytest.mark.parametrize(
    ("record", "cfg", "rule"),
    [
        (rec("q", "fine answer"), {}, None),
        (rec("q", "a"), {"min_answer_chars": 2}, "short_answer"),
        (rec("q", " ", "r"), {"min_answer_chars": 2}, "short_answer"),  # the reasoning "r" is 1 character
        (rec("q" * 50, "a"), {"max_chars": 40}, "too_long"),
        (rec("q", "the same words again " * 30), {}, "repetition"),
        (rec("q", LONG), {}, None),
        (rec("q", "the same words again " * 30), {"max_repeated_ngram_ratio": None}, None),
        (rec("q", "caf\ufffd"), {}, "broken_encoding"),
        (rec("q", "CafÃ© au lait"), {}, "broken_encoding"),
        (rec("q", "bell\x07"), {}, "broken_encoding"),
        (rec("q", "caf\ufffd"), {"reject_broken_encoding": False}, None),
        (rec("Café, naïve, 東京, Привет", "ok ✓ — “quoted”"), {}, None),
    ],
)
def test_quality_rules(record, cfg, rule):
    problem = quality_problem(record, CleaningConfig(**cfg))
    assert (problem[0] if problem else None) == rule


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("ok", None),
        ("a\ufffdb", "U+FFFD"),
        ("donâ€™t", "mojibake 'â€™'"),
        ("naÃ¯ve", "meant 'ï'"),
        ("tab\tand newline\n are fine\r", None),
        ("nul\x00", "control character"),
        ("Ångström, Ça va, Öl", None),  # capitals with diacritics followed by ASCII are not mojibake
    ],
)
def test_encoding_problem(text, fragment):
    problem = encoding_problem(text)
    assert (problem is None) if fragment is None else (fragment in problem)


def test_repeated_ngram_ratio():
    assert repeated_ngram_ratio("short text") == 0.0
    assert repeated_ngram_ratio(LONG) < 0.1
    assert repeated_ngram_ratio("I think so. " * 40) > 0.9


@pytest.mark.parametrize(
    ("text", "kinds", "expected", "counts"),
    [
        ("write to ann.lee+x@mail.example.org today", None, "write to [EMAIL] today", {"email": 1}),
        ("card 4111 1111 1111 1111 ok", None, "card [CARD] ok", {"card": 1}),
        ("card 4111-1111-1111-1112 fails Luhn", None, "card 4111-1111-1111-1112 fails Luhn", {}),
        ("SSN 078-05-1120.", None, "SSN [ID].", {"id": 1}),
        ("IBAN GB82 WEST 1234 5698 7654 32", None, "IBAN [ID]", {"id": 1}),
        ("IBAN GB00 WEST 1234 5698 7654 32", ["id"], "IBAN GB00 WEST 1234 5698 7654 32", {}),
        ("call +44 20 7946 0958 or (555) 123-4567", None, "call [PHONE] or [PHONE]", {"phone": 2}),
        ("12 * 3 = 36, then 36 - 6 = 30; 2024-01-15; 1000000000; 3.14159", None, None, {}),
        ("host 10.0.0.1", ["ip"], "host [IP]", {"ip": 1}),
        ("host 10.0.0.1", None, "host 10.0.0.1", {}),  # ip is not a default kind
    ],
)
def test_anonymise(text, kinds, expected, counts):
    out, found = anonymise(text, kinds) if kinds else anonymise(text)
    assert out == (text if expected is None else expected)
    assert dict(found) == counts


def test_names_list_and_heuristic():
    text = "Ask Maria Lopez. The Eiffel Tower is in Paris. Bob agreed."
    out, counts = anonymise(text, ["name"], names=["Bob"])
    assert out == "Ask Maria Lopez. The Eiffel Tower is in Paris. [NAME] agreed." and counts["name"] == 1
    out, counts = anonymise(text, ["name"], names=["Bob"], name_heuristic=True)
    assert out == "Ask [NAME]. The Eiffel Tower is in Paris. [NAME] agreed." and counts["name"] == 2


@pytest.mark.parametrize(("digits", "ok"), [("4111111111111111", True), ("79927398713", True), ("79927398710", False)])
def test_luhn(digits, ok):
    assert luhn_valid(digits) is ok


def test_iban():
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE00 3704 0044 0532 0130 00")


def test_exact_and_near_duplicates_name_the_first_occurrence():
    base = LONG + " The answer is 42."
    records = [
        rec("What is six times seven?", base, line=1),
        rec("what is  SIX times seven?", base, line=2),  # exact after normalisation
        rec("What is six times seven?", base.replace("42", "forty-two"), line=3),  # near
        rec("Name a colour.", "Blue is a colour that many people like very much.", line=4),
    ]
    kept, rejects, report = clean_records(records, CleaningConfig())
    assert [r["meta"]["line"] for r in kept] == [1, 4]
    assert [(r.line, r.rule) for r in rejects] == [(2, "exact_duplicate"), (3, "near_duplicate")]
    assert rejects[0].reason == "exact_duplicate: same text as d.jsonl:1"
    assert rejects[1].reason.startswith("near_duplicate: similar to d.jsonl:1 (Jaccard ≈ 0.")
    assert rejects[0].to_json()["rule"] == "exact_duplicate"
    assert report.to_json() == {"seen": 4, "kept": 2, "removed": {"exact_duplicate": 1, "near_duplicate": 1}, "pii": {}}


def test_dedup_on_prompt_only():
    records = [rec("Same question?", "Answer one is here."), rec("Same question?", "A different answer.", line=2)]
    assert len(clean_records(records, CleaningConfig())[0]) == 2
    assert len(clean_records(records, CleaningConfig(dedup_on="prompt"))[0]) == 1


def test_pii_is_replaced_in_every_field_and_counted():
    r = rec("mail bob@example.com", "call 555-123-4567 now", reasoning="his card 4111 1111 1111 1111")
    kept, rejects, report = clean_records([r], CleaningConfig(pii=True))
    msgs = kept[0]["messages"]
    assert msgs[0]["content"] == "mail [EMAIL]"
    assert msgs[1]["content"] == "call [PHONE] now" and msgs[1]["reasoning"] == "his card [CARD]"
    assert dict(report.pii) == {"email": 1, "phone": 1, "card": 1}
    assert r["messages"][0]["content"] == "mail bob@example.com"  # the input record is not changed


def test_cleaner_passes_read_rejects_through():
    reject = Reject("f.jsonl", 3, "invalid JSON: x")
    out = list(Cleaner(CleaningConfig()).stream([reject, rec("q", "fine answer")]))
    assert out[0] is reject and isinstance(out[1], dict)


def test_bundled_set_is_clean_except_renamed_copies():
    records = read_records("bundled:arithmetic/train").records
    kept, rejects, _ = clean_records(records, CleaningConfig())
    assert len(kept) == len(records) - 4
    assert {r.rule for r in rejects} == {"near_duplicate"}
    by_line = {r["meta"]["line"]: r["messages"][0]["content"] for r in records}
    for r in rejects:  # the same problem with only the person's name changed
        other = int(r.reason.split(":")[-1].split()[0])
        assert by_line[r.line].split(" ", 1)[1] == by_line[other].split(" ", 1)[1]


def test_near_duplicate_index_and_clusters():
    idx = NearDuplicateIndex(0.8)
    assert idx.find_or_add("a", LONG) is None
    key, sim = idx.find_or_add("b", LONG + " Indeed.")
    assert key == "a" and 0.8 <= sim < 1
    assert idx.find_or_add("c", "Something else entirely, about cats and the weather in spring.") is None
    assert len(idx) == 2
    texts = [LONG, "other text", LONG.upper(), LONG + " Indeed.", "x"]
    clusters = duplicate_clusters(texts, 0.8)
    assert clusters[0] == clusters[2] == clusters[3] and len(set(clusters)) == 3
    assert duplicate_clusters(texts, None)[3] != clusters[0]  # exact only


def test_shingles_and_exact_key():
    assert shingles("What is 3 + 4?") == {b"what is 3 4"}
    assert len(shingles(LONG)) > 20
    assert exact_key("A  b\nC") == exact_key("a b c")


@pytest.mark.parametrize(
    ("text", "script"),
    [
        ("The quick brown fox", "latin"),
        ("Привет, как дела?", "cyrillic"),
        ("مرحبا بالعالم", "arabic"),
        ("你好，世界", "chinese"),
        ("こんにちは世界", "japanese"),
        ("안녕하세요 세계", "korean"),
        ("Γειά σου κόσμε", "greek"),
        ("שלום עולם", "hebrew"),
        ("नमस्ते दुनिया", "devanagari"),
        ("12 + 30 = 42", "none"),
    ],
)
def test_detect_script(text, script):
    assert detect_script(text) == script
