"""The loss mask: labels are the assistant turns (thinking, answer, end-of-turn token) and -100 everywhere else."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from thinktune.data.formats import RecordError
from thinktune.data.render import IGNORE, render_prompt, template_messages, tokenize_conversation, tokenize_record


def m(role: str, content: str, reasoning: str | None = None) -> dict:
    return {"role": role, "content": content, "reasoning": reasoning}


CONVERSATIONS = {
    "single_turn_reasoning": [
        m("user", "Tom has 5 apples. He buys 3 more apples. How many apples does Tom have now?"),
        m("assistant", "The answer is \\boxed{8}.", "5 + 3 = 8"),
    ],
    "multi_turn": [
        m("system", "You are a helpful assistant. Please reason step by step."),
        m("user", "What is 3 + 4?"),
        m("assistant", "It is 7."),
        m("user", "And 12 * 3 - 6?"),
        m("assistant", "So the answer is \\boxed{30}.", "12 * 3 = 36, then 36 - 6 = 30."),
    ],
    "multi_turn_all_reasoning": [
        m("user", "Hello, world!"),
        m("assistant", "Hello! How are you today?", "A greeting."),
        m("user", "I am fine, thank you."),
        m("assistant", "Glad to hear it.", "Be kind.\nSay something nice."),
    ],
    "assistant_repeats_user_text": [
        m("user", "Say: the quick brown fox"),
        m("assistant", "the quick brown fox"),
    ],
    "single_letter_answers": [  # "a" and "t" also occur inside the role header
        m("user", "Pick a, b, c or d."),
        m("assistant", "a"),
        m("user", "One letter of 'cat'?"),
        m("assistant", "t"),
    ],
}


def rendered_turn(msg: dict) -> str:
    if msg["reasoning"]:
        return f"<think>\n{msg['reasoning']}\n</think>\n\n{msg['content']}"
    return msg["content"]


@pytest.fixture
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def runs_of_labels(labels: list[int]) -> list[list[int]]:
    runs, cur = [], []
    for x in labels:
        if x != IGNORE:
            cur.append(x)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_loss_mask_covers_exactly_the_assistant_turns(tokenizer, name):
    """Every assistant turn is trained once, as thinking + answer + end of turn, right after the exact inference
    prompt of its history; nothing else is trained."""
    messages = CONVERSATIONS[name]
    eot = tokenizer.eos_token
    assert eot == "<|im_end|>"
    samples = tokenize_record(tokenizer, {"messages": messages, "meta": {}})
    assistants = [i for i, x in enumerate(messages) if x["role"] == "assistant"]
    trained_turns = []
    for sample in samples:
        ids, labels = sample.input_ids, sample.labels
        assert len(labels) == len(ids)
        assert all(lab == IGNORE or lab == tok for lab, tok in zip(labels, ids, strict=True))
        k = 0
        for run in runs_of_labels(labels):
            start = next(j for j in range(k, len(labels)) if labels[j] != IGNORE)
            k = start + len(run)
            turn = next(i for i in assistants if tokenizer.decode(run) == rendered_turn(messages[i]) + eot)
            # what comes before the trained run is the inference prompt of the turn's history, token for token
            prompt = render_prompt(tokenizer, messages[:turn])
            assert ids[:start] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
            trained_turns.append(turn)
            masked = tokenizer.decode(run)
            assert "<|im_start|>" not in masked and "user" not in masked and "system" not in masked
    assert sorted(trained_turns) == assistants
    if not any(x["reasoning"] for x in messages[: assistants[-1]]):
        assert len(samples) == 1  # history kept as written: every turn shares one sequence


def test_system_prompt_inserted_only_without_system_message(tokenizer):
    sp = "Think step by step inside <think></think>."
    no_system = CONVERSATIONS["single_turn_reasoning"]
    with_system = CONVERSATIONS["multi_turn"]

    msgs = template_messages(no_system, sp)
    assert msgs[0] == {"role": "system", "content": sp}
    assert len(msgs) == len(no_system) + 1
    sample = tokenize_conversation(tokenizer, no_system, system_prompt=sp)
    text = tokenizer.decode(sample.input_ids)
    assert text.startswith(f"<|im_start|>system\n{sp}<|im_end|>")
    assert sp not in tokenizer.decode([t for t in sample.labels if t != IGNORE])

    msgs = template_messages(with_system, sp)
    assert [x["role"] for x in msgs] == [x["role"] for x in with_system]
    assert sp not in tokenizer.decode(tokenize_conversation(tokenizer, with_system, system_prompt=sp).input_ids)

    # the prompt for generation gets it too, and ends with the assistant header
    prompt = render_prompt(tokenizer, no_system[:1], sp)
    assert prompt.startswith(f"<|im_start|>system\n{sp}")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_same_labels_with_or_without_system_prompt(tokenizer):
    conv = CONVERSATIONS["single_turn_reasoning"]
    a = tokenize_conversation(tokenizer, conv)
    b = tokenize_conversation(tokenizer, conv, system_prompt="Be brief.")
    assert [t for t in a.labels if t != IGNORE] == [t for t in b.labels if t != IGNORE]


@pytest.mark.parametrize(("max_length", "ok"), [(None, True), (10_000, True), (10, False)])
def test_too_long_is_rejected_not_cut(tokenizer, max_length, ok):
    conv = CONVERSATIONS["multi_turn"]
    if ok:
        sample = tokenize_conversation(tokenizer, conv, max_length=max_length)
        assert len(sample.input_ids) == len(tokenize_conversation(tokenizer, conv).input_ids)
    else:
        with pytest.raises(RecordError, match=r"too long: \d+ tokens > data.max_length=10"):
            tokenize_conversation(tokenizer, conv, max_length=max_length)


def test_exact_length_limit_passes(tokenizer):
    conv = CONVERSATIONS["single_turn_reasoning"]
    n = len(tokenize_conversation(tokenizer, conv).input_ids)
    assert len(tokenize_conversation(tokenizer, conv, max_length=n).input_ids) == n
    with pytest.raises(RecordError, match="too long"):
        tokenize_conversation(tokenizer, conv, max_length=n - 1)


DROPPING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n[redacted]<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
)


def test_template_without_assistant_content_raises(tokenizer):
    tokenizer.chat_template = DROPPING_TEMPLATE
    with pytest.raises(RecordError, match=r"messages\[1\]: assistant text not found in the chat template's output"):
        tokenize_conversation(tokenizer, CONVERSATIONS["single_turn_reasoning"])


def test_template_that_drops_history_reasoning_still_masks_answers(tokenizer):
    """Qwen3-style templates drop the reasoning of earlier turns; the answers must still be found and trained."""
    tokenizer.chat_template = (
        "{% for message in messages %}"
        "{% set c = message['content'] %}"
        "{% if message['role'] == 'assistant' and not loop.last and '</think>' in c %}"
        "{% set c = c.split('</think>')[-1].lstrip() %}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + c + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    conv = CONVERSATIONS["multi_turn_all_reasoning"]
    first, second = tokenize_record(tokenizer, {"messages": conv, "meta": {}})
    assert [tokenizer.decode(r) for r in runs_of_labels(first.labels)] == [rendered_turn(conv[1]) + "<|im_end|>"]
    # the second turn's history shows the first answer without its thinking, as at inference: context, not trained
    assert "Hello! How are you today?<|im_end|>" in tokenizer.decode(second.input_ids)
    assert [tokenizer.decode(r) for r in runs_of_labels(second.labels)] == [rendered_turn(conv[3]) + "<|im_end|>"]


def test_padding_left_on_by_a_batch_call_does_not_reach_training_samples(tokenizer):
    """Generation pads batches (`tokenizer(..., padding=True)`), which switches padding on in the Rust backend."""
    conv = CONVERSATIONS["single_turn_reasoning"]
    before = tokenize_conversation(tokenizer, conv)
    tokenizer.padding_side = "left"
    tokenizer(["a", "a b c d e f g h"], padding=True)
    after = tokenize_conversation(tokenizer, conv)
    assert after.input_ids == before.input_ids and after.labels == before.labels
    assert tokenizer(["a", "a b"], padding=True)["input_ids"][0][0] == tokenizer.pad_token_id  # still padding
