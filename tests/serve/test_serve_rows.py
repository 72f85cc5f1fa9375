"""Per-row stop handling, token → text, and per-row sampling: the engine pieces that need no server."""

from __future__ import annotations

import pytest
import torch

from thinktune.serve.detokenize import IncrementalDetokenizer, find_stop, stop_holdback
from thinktune.serve.engine import Finished, GenerationRequest, RowState, TextDelta, left_pad
from thinktune.serve.sampling import RowSampler, SamplingParams

EOS = 2  # <|im_end|> in the tiny tokenizer


@pytest.mark.parametrize("text", ["The answer is 42.", "héllo ✓ 3.14 — naïve", "<think>\nx\n</think>\n\ny", ""])
def test_incremental_detokenizer_rebuilds_the_text(tiny_tokenizer, text):
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tiny_tokenizer)
    pieces = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == tiny_tokenizer.decode(ids) == text


@pytest.mark.parametrize(
    "text,stops,start,expected",
    [
        ("abc STOP def", ("STOP",), 0, 4),
        ("abc", ("x",), 0, None),
        ("a. b. c.", (". c", ". b"), 0, 1),
        ("xSTOP", ("STOP",), 2, None),
    ],
)
def test_find_stop(text, stops, start, expected):
    assert find_stop(text, stops, start) == expected


@pytest.mark.parametrize(
    "text,stops,held",
    [("the end", ("ending",), 3), ("abc", ("x",), 0), ("a\n\n", ("\n\n\n",), 2), ("ab", ("b", "abc"), 2)],
)
def test_stop_holdback(text, stops, held):
    assert stop_holdback(text, stops) == held


def run_row(tokenizer, text: str, end_with_eos: bool = True, **params) -> tuple[list, list[str]]:
    events = []
    request = GenerationRequest([0, 1], SamplingParams(**{"max_tokens": 100, **params}), events.append)
    row = RowState(request, IncrementalDetokenizer(tokenizer), [EOS])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([EOS] if end_with_eos else [])
    for token in ids:
        row.step(token)
    row.finish("length")
    return events, [e.text for e in events if isinstance(e, TextDelta)]


def test_row_stops_at_end_of_turn(tiny_tokenizer):
    events, deltas = run_row(tiny_tokenizer, "The answer is 42.")
    assert "".join(deltas) == "The answer is 42."
    assert events[-1] == Finished("stop", 2, len(tiny_tokenizer("The answer is 42.")["input_ids"]) + 1)


def test_row_stops_at_max_tokens(tiny_tokenizer):
    events, deltas = run_row(tiny_tokenizer, "The quick brown fox jumps over the lazy dog.", max_tokens=3)
    assert events[-1] == Finished("length", 2, 3)
    assert "".join(deltas) == tiny_tokenizer.decode(tiny_tokenizer("The quick brown fox jumps")["input_ids"][:3])


def test_row_cuts_at_a_stop_string_and_never_sends_part_of_it(tiny_tokenizer):
    events, deltas = run_row(tiny_tokenizer, "First, we compute the total. Then we divide.", stop=("Then we",))
    assert "".join(deltas) == "First, we compute the total. "
    assert events[-1].reason == "stop"
    assert not any("Then" in d for d in deltas)


def test_row_ignore_eos_keeps_going(tiny_tokenizer):
    events, deltas = run_row(tiny_tokenizer, "abc", ignore_eos=True, max_tokens=100)
    assert events[-1].reason == "length"  # end-of-turn did not stop it; the stream simply ran out


def test_abandoned_row_stays_silent(tiny_tokenizer):
    events = []
    request = GenerationRequest([0], SamplingParams(max_tokens=10), events.append)
    row = RowState(request, IncrementalDetokenizer(tiny_tokenizer), [EOS])
    row.step(5)
    request.cancel()
    row.step(6)
    assert row.finished and not any(isinstance(e, Finished) for e in events)


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def chosen(sampler: RowSampler, scores: torch.Tensor, input_ids: torch.Tensor | None = None) -> list[int]:
    input_ids = input_ids if input_ids is not None else torch.zeros((scores.shape[0], 1), dtype=torch.long)
    out = sampler(input_ids, scores.clone())
    assert torch.isfinite(out).sum(dim=-1).tolist() == [1] * scores.shape[0]  # one choice per row, for greedy argmax
    return out.argmax(-1).tolist()


def test_sampler_greedy_and_top_k_1_take_the_argmax():
    scores = torch.randn(3, 50)
    params = [
        SamplingParams(8, temperature=0),
        SamplingParams(8, temperature=1.5, top_k=1),
        SamplingParams(8, 0.7, 0.01),
    ]
    assert chosen(RowSampler(params, [EOS]), scores) == scores.argmax(-1).tolist()


def test_sampler_seed_reproduces_and_rows_are_independent():
    scores = torch.zeros(2, 1000)  # uniform: any token is possible
    a = [chosen(RowSampler([SamplingParams(8, seed=7), SamplingParams(8, seed=8)], [EOS]), scores) for _ in range(2)]
    assert a[0] == a[1]
    alone = chosen(RowSampler([SamplingParams(8, seed=7)], [EOS]), scores[:1])
    assert alone == a[0][:1]  # a row's draw does not depend on its batch companions


def test_sampler_ignore_eos_masks_end_tokens():
    scores = torch.zeros(2, 10)
    scores[:, EOS] = 100.0
    params = [SamplingParams(8, temperature=0, ignore_eos=True), SamplingParams(8, temperature=0)]
    picks = chosen(RowSampler(params, [EOS]), scores)
    assert picks[0] != EOS and picks[1] == EOS


def test_sampler_repetition_penalty_moves_off_seen_tokens():
    scores = torch.tensor([[0.0, 2.0, 1.9]])
    seen = torch.tensor([[1]])
    assert chosen(RowSampler([SamplingParams(8, temperature=0)], [EOS]), scores, seen) == [1]
    assert chosen(RowSampler([SamplingParams(8, temperature=0, repetition_penalty=1.2)], [EOS]), scores, seen) == [2]


def test_sampler_top_p_keeps_the_nucleus():
    scores = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    picks = {
        chosen(RowSampler([SamplingParams(8, temperature=1.0, top_p=0.5, seed=s)], [EOS]), scores)[0] for s in range(30)
    }
    assert picks == {0}
    picks = {
        chosen(RowSampler([SamplingParams(8, temperature=1.0, top_p=0.85, seed=s)], [EOS]), scores)[0]
        for s in range(60)
    }
    assert picks == {0, 1}
