"""Statistics in one pass, and the masked view that shows what training sees."""

from __future__ import annotations

import pytest

from thinktune.data.formats import RecordError
from thinktune.data.inspection import CLOSE, OPEN, masked_view
from thinktune.data.reading import Reject
from thinktune.data.records import strip_reasoning
from thinktune.data.render import IGNORE, tokenize_conversation
from thinktune.data.stats import compute_stats, histogram, summary, write_histogram_png


def m(role, content, reasoning=None):
    return {"role": role, "content": content, "reasoning": reasoning}


def rec(user, answer, reasoning=None, extra_turns=()):
    return {"messages": [*extra_turns, m("user", user), m("assistant", answer, reasoning)], "meta": {}}


def test_compute_stats(tiny_tokenizer):
    items = [
        rec("What is 3 + 4?", "7", "3 + 4 = 7"),
        rec("What is 3 + 4?", "7", "3 + 4 = 7"),  # duplicate
        rec("Привет, как дела?", "Хорошо"),
        rec("你好，世界", "好", extra_turns=[m("system", "Be brief.")]),
        rec("Tom has 5 apples. " * 30, "8"),  # long
        Reject("f.jsonl", 7, "invalid JSON: Expecting value"),
        Reject("f.jsonl", 9, "invalid JSON: Extra data"),
    ]
    stats = compute_stats(items, tiny_tokenizer, max_length=100)
    assert (stats.records, stats.rejects) == (5, 2)
    assert stats.reject_reasons == {"invalid JSON": 2}
    assert stats.turns == {2: 4, 3: 1}
    assert stats.roles == {"user": 5, "assistant": 5, "system": 1}
    assert stats.with_reasoning == 2 and stats.duplicates == 1 and stats.duplicate_rate == pytest.approx(0.2)
    assert stats.scripts == {"latin": 3, "cyrillic": 1, "chinese": 1}
    lengths = [len(tokenize_conversation(tiny_tokenizer, r["messages"]).input_ids) for r in items[:5]]
    assert list(stats.token_lengths) == lengths
    assert stats.too_long == sum(n > 100 for n in lengths) == 1
    assert len(stats.think_lengths) == 2
    js = stats.to_json()
    assert js["tokens"]["max"] == max(lengths) and js["too_long"] == 1 and js["turns"] == {"2": 4, "3": 1}


def test_summary_and_histogram():
    assert summary([]) == {"count": 0}
    s = summary(list(range(1, 101)))
    assert (s["min"], s["p50"], s["p90"], s["max"], s["mean"]) == (1, 51, 91, 100, 50.5)
    lines = histogram([1, 2, 2, 3, 50], bins=5, limit=20)
    assert len(lines) == 5 and "> max_length" in lines[-1] and "> max_length" not in lines[0]
    assert histogram([]) == ["  (no values)"]


def test_histogram_png(tiny_tokenizer, tmp_path):
    stats = compute_stats([rec("q", "a", "r"), rec("qq", "aa")], tiny_tokenizer, 64)
    path = write_histogram_png(stats, tmp_path / "plots" / "h.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_masked_view_matches_the_labels(tiny_tokenizer):
    messages = rec("Tom has 5 apples.", "The answer is \\boxed{8}.", "5 + 3 = 8")["messages"]
    view = masked_view(tiny_tokenizer, messages)
    sample = tokenize_conversation(tiny_tokenizer, messages)
    assert view.tokens == len(sample.input_ids) and view.trained_tokens == sample.trained_tokens
    assert view.trained_text() == tiny_tokenizer.decode([t for t in sample.labels if t != IGNORE])
    plain = view.plain()
    assert plain.replace(OPEN, "").replace(CLOSE, "") == tiny_tokenizer.decode(sample.input_ids)
    assert f"{OPEN}<think>\n5 + 3 = 8\n</think>\n\nThe answer is \\boxed{{8}}.<|im_end|>{CLOSE}" in plain
    assert "Tom has 5 apples." in plain.split(OPEN)[0]  # the prompt is outside the markers
    styled = view.rich()
    assert styled.plain == tiny_tokenizer.decode(sample.input_ids)
    green = "".join(styled.plain[s.start : s.end] for s in styled.spans if s.style == "bold green")
    assert green == view.trained_text()


def test_masked_view_without_thinking(tiny_tokenizer):
    r = rec("q", "a", "secret reasoning")
    view = masked_view(tiny_tokenizer, strip_reasoning(r)["messages"])
    assert "secret reasoning" not in view.plain() and f"{OPEN}a<|im_end|>{CLOSE}" in view.plain()


def test_masked_view_untrainable_raises():
    from tests.tiny_models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    tok.chat_template = "{% for message in messages %}{{ message['role'] }}{% endfor %}"  # drops every text
    with pytest.raises(RecordError, match="assistant text not found"):
        masked_view(tok, rec("q", "The answer is 8.")["messages"])
