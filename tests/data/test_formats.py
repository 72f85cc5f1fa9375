"""Every input format converts to the canonical SFT record; unusable records raise RecordError with a reason."""

from __future__ import annotations

import pytest

from thinktune.data.formats import FORMATS, RecordError, detect_format, split_think, to_sft_record


def msg(role: str, content: str, reasoning: str | None = None) -> dict:
    return {"role": role, "content": content, "reasoning": reasoning}


# (name, raw record, expected messages, expected meta["format"], extra meta expected)
GOOD = [
    (
        "openai_reasoning_content",
        {
            "messages": [
                {"role": "user", "content": "What is 3+4?"},
                {"role": "assistant", "reasoning_content": "3 + 4 = 7", "content": "The answer is \\boxed{7}."},
            ],
            "answer": "7",
        },
        [msg("user", "What is 3+4?"), msg("assistant", "The answer is \\boxed{7}.", "3 + 4 = 7")],
        "messages",
        {"answer": "7"},
    ),
    (
        "messages_inline_think",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "2*6?"},
                {"role": "assistant", "content": "<think>\n2 * 6 = 12\n</think>\n\n\\boxed{12}"},
            ]
        },
        [msg("system", "Be brief."), msg("user", "2*6?"), msg("assistant", "\\boxed{12}", "2 * 6 = 12")],
        "messages",
        {},
    ),
    (
        "messages_no_reasoning_multi_turn",
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "<think>polite</think>Goodbye."},
            ],
            "id": 17,
        },
        [msg("user", "Hi"), msg("assistant", "Hello!"), msg("user", "Bye"), msg("assistant", "Goodbye.", "polite")],
        "messages",
        {"id": 17},
    ),
    (
        "messages_think_only",
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "<think>just thinking</think>"},
            ]
        },
        [msg("user", "q"), msg("assistant", "", "just thinking")],
        "messages",
        {},
    ),
    (
        "alpaca_without_input",
        {"instruction": "Add 2 and 3.", "output": "5"},
        [msg("user", "Add 2 and 3."), msg("assistant", "5")],
        "alpaca",
        {},
    ),
    (
        "alpaca_with_input",
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "<think>2+3=5</think> 5", "answer": "5"},
        [msg("user", "Add the numbers.\n\n2 and 3"), msg("assistant", "5", "2+3=5")],
        "alpaca",
        {"answer": "5"},
    ),
    (
        "alpaca_blank_input_and_system_and_reasoning_content",
        {"instruction": "Add.", "input": "  ", "output": "5", "system": "Be exact.", "reasoning_content": "2+3"},
        [msg("system", "Be exact."), msg("user", "Add."), msg("assistant", "5", "2+3")],
        "alpaca",
        {},
    ),
    (
        "sharegpt_human_gpt",
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "<think>greet</think>Hello"}]},
        [msg("user", "Hi"), msg("assistant", "Hello", "greet")],
        "sharegpt",
        {},
    ),
    (
        "sharegpt_system_field_and_turn",
        {
            "system": "You are terse.",
            "conversations": [
                {"from": "human", "value": "1+1?"},
                {"from": "gpt", "value": "2"},
                {"from": "user", "value": "2+2?"},
                {"from": "assistant", "value": "4"},
            ],
            "source": "x",
        },
        [
            msg("system", "You are terse."),
            msg("user", "1+1?"),
            msg("assistant", "2"),
            msg("user", "2+2?"),
            msg("assistant", "4"),
        ],
        "sharegpt",
        {"source": "x"},
    ),
    (
        "sharegpt_system_turn",
        {
            "conversations": [
                {"from": "system", "value": "S"},
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "a"},
            ]
        },
        [msg("system", "S"), msg("user", "q"), msg("assistant", "a")],
        "sharegpt",
        {},
    ),
]


@pytest.mark.parametrize(("raw", "messages", "fmt", "meta"), [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_converts_to_canonical_record(raw, messages, fmt, meta):
    rec = to_sft_record(raw)
    assert set(rec) == {"messages", "meta"}
    assert rec["messages"] == messages
    for m in rec["messages"]:
        assert set(m) == {"role", "content", "reasoning"}
    assert rec["meta"] == {**meta, "format": fmt}
    # the explicit format gives the same result as auto-detection
    assert to_sft_record(raw, fmt) == rec


# (name, raw record, forced format or "auto", fragment of the reason)
BAD = [
    ("not_an_object_list", [1, 2], "auto", "must be a JSON object, got list"),
    ("not_an_object_str", "hello", "auto", "must be a JSON object, got str"),
    ("unknown_format", {"prompt": "x", "completion": "y"}, "auto", "unknown record format"),
    ("no_assistant", {"messages": [{"role": "user", "content": "hi"}]}, "auto", "no assistant message"),
    ("no_user", {"messages": [{"role": "assistant", "content": "hi"}]}, "auto", "no user message"),
    ("unknown_role", {"messages": [{"role": "bot", "content": "hi"}]}, "auto", "messages[0]: unknown role 'bot'"),
    ("missing_role", {"messages": [{"content": "hi"}]}, "auto", "unknown role None"),
    (
        "non_string_content",
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
        "auto",
        "messages[0]: content must be a string, got int",
    ),
    (
        "content_parts_not_objects",
        {"messages": [{"role": "user", "content": ["a", "b"]}, {"role": "assistant", "content": "x"}]},
        "auto",
        "messages[0]: content[0]: a content part must be an object",
    ),
    (
        "non_string_reasoning",
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": 3}]},
        "auto",
        "reasoning_content must be a string",
    ),
    (
        "missing_content",
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
        "auto",
        "messages[0]: missing field 'content'",
    ),
    (
        "unclosed_think",
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>hmm 42"}]},
        "auto",
        "assistant message opens <think> but never closes it",
    ),
    (
        "empty_assistant",
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  \n"}]},
        "auto",
        "messages[1]: empty assistant message",
    ),
    (
        "empty_think_and_answer",
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think> </think>"}]},
        "auto",
        "empty assistant message",
    ),
    ("empty_messages", {"messages": []}, "auto", "'messages' must be a non-empty list"),
    ("messages_not_list", {"messages": "hi"}, "auto", "'messages' must be a non-empty list"),
    ("message_not_object", {"messages": ["hi"]}, "auto", "messages[0] must be an object"),
    ("alpaca_missing_output", {"instruction": "x"}, "auto", "field 'output' must be a string"),
    ("alpaca_missing_instruction", {"output": "x"}, "alpaca", "field 'instruction' must be a string"),
    ("alpaca_empty_instruction", {"instruction": " ", "output": "x"}, "auto", "empty instruction"),
    ("alpaca_empty_output", {"instruction": "q", "output": ""}, "auto", "output: empty assistant message"),
    ("alpaca_unclosed_think", {"instruction": "q", "output": "<think>a"}, "auto", "never closes"),
    ("sharegpt_empty", {"conversations": []}, "auto", "'conversations' must be a non-empty list"),
    (
        "sharegpt_missing_value",
        {"conversations": [{"from": "human"}]},
        "auto",
        "conversations[0] needs 'from' and 'value'",
    ),
    (
        "sharegpt_unknown_speaker",
        {"conversations": [{"from": "human", "value": "q"}, {"from": "bard", "value": "a"}]},
        "auto",
        "conversations[1]: unknown speaker 'bard'",
    ),
    (
        "sharegpt_no_gpt",
        {"conversations": [{"from": "human", "value": "q"}]},
        "auto",
        "no assistant message",
    ),
    (
        "sharegpt_non_string_value",
        {"conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": "a"}]},
        "auto",
        "conversations[0]: content must be a string, got int",
    ),
    ("forced_format_mismatch", {"instruction": "q", "output": "a"}, "messages", "'messages' must be a non-empty list"),
]


@pytest.mark.parametrize(("raw", "fmt", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_record_raises_with_reason(raw, fmt, reason):
    with pytest.raises(RecordError) as e:
        to_sft_record(raw, fmt)
    assert reason in str(e.value)


@pytest.mark.parametrize(
    ("raw", "fmt"),
    [
        ({"messages": []}, "messages"),
        ({"conversations": []}, "sharegpt"),
        ({"instruction": "x", "output": "y"}, "alpaca"),
        ({"instruction": "x"}, "alpaca"),
        ({"messages": [], "instruction": "x"}, "messages"),  # messages wins
        ({"conversations": [], "instruction": "x"}, "sharegpt"),
    ],
)
def test_detect_format(raw, fmt):
    assert detect_format(raw) == fmt
    assert fmt in FORMATS


def test_detect_format_unknown():
    with pytest.raises(RecordError, match="unknown record format"):
        detect_format({"text": "x"})


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("<think>a</think>b", ("a", "b")),
        ("  <think>\n a \n</think>\n\n b ", ("a", "b")),
        ("<think></think>b", ("", "b")),
        ("no think here", (None, "no think here")),
        ("answer then <think>x</think>", (None, "answer then <think>x</think>")),  # only a leading block is split
        ("</think> stray close", (None, "</think> stray close")),
    ],
)
def test_split_think(content, expected):
    assert split_think(content) == expected


def test_split_think_unclosed():
    with pytest.raises(RecordError, match="never closes"):
        split_think("<think>still going")


def test_reasoning_content_is_not_split_again():
    """With an explicit reasoning_content, the content is kept verbatim (no <think> parsing)."""
    rec = to_sft_record(
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "reasoning_content": "r", "content": "a"},
            ]
        }
    )
    assert rec["messages"][1] == msg("assistant", "a", "r")


def test_empty_reasoning_becomes_none():
    rec = to_sft_record(
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "reasoning_content": "", "content": "a"}]}
    )
    assert rec["messages"][1]["reasoning"] is None
