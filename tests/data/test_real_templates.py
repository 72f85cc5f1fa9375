"""Training samples on the real chat templates of the models users tune (../shared/templates): DeepSeek-R1-Distill-Qwen
(drops the reasoning of every assistant turn) and Qwen3 (keeps it after the last user query only, thinking switch,
tools). What is trained must be what the model sees at inference followed by what it must write."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thinktune.data.formats import RecordError, to_sft_record
from thinktune.data.inspection import masked_views
from thinktune.data.render import IGNORE, RenderOptions, render_prompt, render_record, tokenize_record
from thinktune.models.loading import ModelSource, load_tokenizer

ROOT = Path(__file__).parents[2]
TEMPLATES = ROOT.parent / "shared" / "templates"
R1_GGUF = "deepseek-r1-distill-qwen.vocab.gguf"


@pytest.fixture(scope="module")
def r1():
    assert (TEMPLATES / R1_GGUF).is_file(), f"missing {TEMPLATES / R1_GGUF} (CI has ../shared beside the checkout)"
    return load_tokenizer(ModelSource(TEMPLATES, R1_GGUF))  # as thinktune loads a GGUF model's tokenizer


@pytest.fixture(scope="module")
def qwen3(r1):
    tok = copy.deepcopy(r1)  # the same Qwen2 vocabulary
    tok.chat_template = (TEMPLATES / "qwen3.jinja").read_text()
    return tok


def record(*turns, **extra) -> dict:
    return to_sft_record({"messages": list(turns), **extra})


def user(text):
    return {"role": "user", "content": text}


def assistant(text, reasoning=None, **kw):
    return {"role": "assistant", "content": text, **({"reasoning_content": reasoning} if reasoning else {}), **kw}


def trained(tok, sample) -> list[str]:
    """The trained runs of a sample, decoded."""
    runs, cur = [], []
    for x in [*sample.labels, IGNORE]:
        if x != IGNORE:
            cur.append(x)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs


def prompt_of(tok, sample) -> str:
    first = next(i for i, x in enumerate(sample.labels) if x != IGNORE)
    return tok.decode(sample.input_ids[:first])


REASONING = "3 + 4 = 7, so the answer is 7."


@pytest.mark.parametrize(
    "rec",
    [
        record(user("What is 3 + 4?"), assistant("\\boxed{7}", REASONING)),
        record(user("What is 3 + 4?"), assistant(f"<think>\n{REASONING}\n</think>\n\n\\boxed{{7}}")),
    ],
    ids=["reasoning_content", "inline_think"],
)
def test_r1_trains_the_reasoning_its_template_drops(r1, rec):
    # the template itself throws the trace away: a naive render would train an answer without thinking
    naive = r1.apply_chat_template(
        [user("q"), {"role": "assistant", "content": f"<think>{REASONING}</think>x"}], tokenize=False
    )
    assert REASONING not in naive
    [sample] = tokenize_record(r1, rec)
    assert trained(r1, sample) == [f"<think>\n{REASONING}\n</think>\n\n\\boxed{{7}}<｜end▁of▁sentence｜>"]
    assert prompt_of(r1, sample) == render_prompt(r1, rec["messages"][:1])  # what inference shows, token for token
    assert (
        r1.convert_ids_to_tokens(sample.input_ids[sample.labels.index(next(x for x in sample.labels if x != IGNORE))])
        == "<think>"
    )
    [view] = masked_views(r1, rec)
    assert view.parity == "ok" and any("does not write this turn's reasoning" in n for n in view.notes)


def test_r1_multi_turn_history_as_at_inference_each_turn_with_its_thinking(r1):
    rec = record(
        user("What is 3 + 4?"),
        assistant("\\boxed{7}", "3 + 4 = 7"),
        user("Times 2?"),
        assistant("\\boxed{14}", "7 * 2 = 14"),
    )
    first, second = tokenize_record(r1, rec)
    assert trained(r1, first) == ["<think>\n3 + 4 = 7\n</think>\n\n\\boxed{7}<｜end▁of▁sentence｜>"]
    assert trained(r1, second) == ["<think>\n7 * 2 = 14\n</think>\n\n\\boxed{14}<｜end▁of▁sentence｜>"]
    assert "<｜Assistant｜>\\boxed{7}<｜end▁of▁sentence｜><｜User｜>Times 2?" in prompt_of(r1, second)
    [last] = tokenize_record(r1, rec, RenderOptions(multi_turn="last"))
    assert last.input_ids == second.input_ids and last.labels == second.labels


def test_qwen3_first_turn_is_never_trained_without_its_thinking(qwen3):
    rec = record(
        user("3 + 4?"), assistant("\\boxed{7}", "3 + 4 = 7"), user("Times 2?"), assistant("\\boxed{14}", "7 * 2 = 14")
    )
    # the template's own render of the whole conversation shows turn 1 as a bare answer
    whole = qwen3.apply_chat_template(
        [
            user("3 + 4?"),
            assistant("\\boxed{7}", "3 + 4 = 7"),
            user("Times 2?"),
            assistant("\\boxed{14}", "7 * 2 = 14"),
        ],
        tokenize=False,
    )
    assert "<|im_start|>assistant\n\\boxed{7}" in whole
    first, second = tokenize_record(qwen3, rec)
    assert trained(qwen3, first) == ["<think>\n3 + 4 = 7\n</think>\n\n\\boxed{7}<|im_end|>"]
    assert trained(qwen3, second) == ["<think>\n7 * 2 = 14\n</think>\n\n\\boxed{14}<|im_end|>"]
    assert prompt_of(qwen3, second).endswith(
        "<|im_start|>assistant\n\\boxed{7}<|im_end|>\n<|im_start|>user\nTimes 2?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_qwen3_thinking_modes(qwen3):
    plain = record(user("Hi"), assistant("Hello!"))
    thinking = record(user("3 + 4?"), assistant("\\boxed{7}", "3 + 4 = 7"))
    empty = "<think>\n\n</think>\n\n"
    # auto: no reasoning → non-thinking mode: the empty think block is in the prompt (enable_thinking=False)
    [s] = tokenize_record(qwen3, plain)
    assert prompt_of(qwen3, s).endswith("<|im_start|>assistant\n" + empty) and trained(qwen3, s) == ["Hello!<|im_end|>"]
    assert prompt_of(qwen3, s) == render_prompt(qwen3, plain["messages"][:1], enable_thinking=False)
    # ... or in the loss
    [s] = tokenize_record(qwen3, plain, RenderOptions(empty_think_in_loss=True))
    assert trained(qwen3, s) == [empty + "Hello!<|im_end|>"] and prompt_of(qwen3, s).endswith("assistant\n")
    # on: thinking mode for every record; the template itself writes an empty block for a record without reasoning
    [s] = tokenize_record(qwen3, plain, RenderOptions(thinking="on"))
    assert trained(qwen3, s) == [empty + "Hello!<|im_end|>"]
    # off: reasoning dropped, non-thinking prompt
    [s] = tokenize_record(qwen3, thinking, RenderOptions(thinking="off"))
    assert trained(qwen3, s) == ["\\boxed{7}<|im_end|>"] and prompt_of(qwen3, s).endswith(empty)
    # per record: the record's own flag
    flagged = record(user("Hi"), assistant("Hello!"), enable_thinking=True)
    [s] = tokenize_record(qwen3, flagged, RenderOptions(thinking="per-record"))
    assert trained(qwen3, s) == [empty + "Hello!<|im_end|>"]
    off = record(user("Hi"), assistant("Hello!"), enable_thinking=False)
    [s] = tokenize_record(qwen3, off, RenderOptions(thinking="per-record"))
    assert trained(qwen3, s) == ["Hello!<|im_end|>"]
    with pytest.raises(RecordError, match="enable_thinking is false but the record has reasoning"):
        tokenize_record(qwen3, record(user("q"), assistant("a", "r"), enable_thinking=False))


GLAIVE = {
    "conversations": [
        {"from": "human", "value": "I have chicken and rice. Find me a recipe."},
        {
            "from": "function_call",
            "value": '{"name": "search_recipes", "arguments": {"ingredients": ["chicken", "rice"]}}',
        },
        {"from": "observation", "value": '{"recipes": [{"name": "Chicken fried rice"}]}'},
        {"from": "gpt", "value": "Try chicken fried rice."},
    ],
    "tools": '[{"name": "search_recipes", "description": "Search recipes", "parameters": {"type": "object", '
    '"properties": {"ingredients": {"type": "array", "items": {"type": "string"}}}, "required": ["ingredients"]}}]',
}


def test_qwen3_tool_calls_trained_as_the_template_writes_them(qwen3):
    rec = to_sft_record(GLAIVE)
    samples = tokenize_record(qwen3, rec)
    runs = [r for s in samples for r in trained(qwen3, s)]
    args = '{"ingredients": ["chicken", "rice"]}'
    call = f'<tool_call>\n{{"name": "search_recipes", "arguments": {args}}}\n</tool_call><|im_end|>'
    assert runs == [call, "Try chicken fried rice.<|im_end|>"]
    text = qwen3.decode(samples[-1].input_ids)
    assert "<tools>" in text and '"name": "search_recipes"' in text  # the tool list in the system turn
    assert "<tool_response>\n" in text  # the tool's result is context, not trained
    for s in samples:
        assert "<tool_response>" not in "".join(trained(qwen3, s))


def test_llamafactory_content_parts_with_reasoning_tool_calls_and_loss_weight(qwen3):
    rec = to_sft_record(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "value": "Tell me about Inception."}],
                    "loss_weight": 0.0,
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "reasoning", "value": "I should look the movie up."},
                        {"type": "tool_call", "value": '{"name": "get_movie", "arguments": {"title": "Inception"}}'},
                    ],
                },
                {"role": "tool", "content": [{"type": "text", "value": '{"year": 2010}'}]},
                {
                    "role": "assistant",
                    "content": [{"type": "text", "value": "It came out in 2010."}],
                    "loss_weight": 0.0,
                },
            ],
            "tools": '[{"type": "function", "function": {"name": "get_movie", "parameters": {"type": "object"}}}]',
        }
    )
    samples = tokenize_record(qwen3, rec)
    runs = [r for s in samples for r in trained(qwen3, s)]
    assert runs == [
        '<think>\nI should look the movie up.\n</think>\n\n<tool_call>\n{"name": "get_movie", "arguments": {"title": '
        '"Inception"}}\n</tool_call><|im_end|>'
    ]  # the final turn has loss_weight 0: context only


def test_r1_tool_calls_in_the_models_syntax(r1):
    rec = to_sft_record(GLAIVE)
    runs = [r for s in tokenize_record(r1, rec) for r in trained(r1, s)]
    assert runs[0].startswith("<tool_call>\n") and runs[0].endswith("<｜end▁of▁sentence｜>")
    assert runs[1] == "Try chicken fried rice.<｜end▁of▁sentence｜>"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (
            {
                "messages": [
                    user("q"),
                    {"role": "assistant", "content": None, "tool_calls": [{"name": "f", "arguments": "{oops"}]},
                ]
            },
            "arguments of tool call 'f' is not JSON",
        ),
        (
            {"messages": [user("q"), {"role": "tool", "content": "42"}, assistant("a")]},
            "tool message without a preceding",
        ),
        ({"messages": [user("q"), {"role": "robot", "content": "a"}]}, "unknown role 'robot'"),
        (
            {"messages": [user("q"), {"role": "assistant", "content": [{"type": "audio", "value": "x"}]}]},
            "unknown content part type 'audio'",
        ),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "not json"}]},
            "is not JSON",
        ),
        ({"messages": [user("q"), assistant("a")], "tools": "[{oops"}, "tools: the tool list is not JSON"),
        ({"messages": [user("q"), {**assistant("a"), "loss_weight": 0.5}]}, "loss_weight must be 0 or 1"),
    ],
)
def test_bad_tool_and_part_records_are_one_line_reasons(raw, reason):
    with pytest.raises(RecordError, match=reason):
        to_sft_record(raw)


def test_parity_mismatch_is_reported(r1):
    """A template whose generation prompt ends mid-word makes the tokeniser merge across the prompt/answer boundary."""
    tok = copy.deepcopy(r1)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\n{% else %}A: {{ m['content'] }}"
        "<｜end▁of▁sentence｜>{% endif %}{% endfor %}{% if add_generation_prompt %}A: {% endif %}"
    )
    rec = record(user("Say hello"), assistant("hello"))
    [rendered] = render_record(tok, rec)
    assert rendered.text.endswith("A: hello<｜end▁of▁sentence｜>")
    with pytest.raises(
        RecordError, match=r"parity mismatch: turn 1's training tokens differ from its inference prompt"
    ):
        tokenize_record(tok, rec)
    [view] = masked_views(tok, rec)
    assert view.parity.startswith("parity mismatch")


@pytest.fixture(scope="module")
def r1_model_dir(tmp_path_factory, r1):
    """A tiny random Qwen2-architecture model carrying the real R1-distill tokenizer."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    out = tmp_path_factory.mktemp("tiny-r1")
    cfg = Qwen2Config(
        vocab_size=len(r1), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, eos_token_id=r1.eos_token_id,
        bos_token_id=r1.bos_token_id, pad_token_id=r1.eos_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    r1.save_pretrained(out)
    return out


def thinktune(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "thinktune", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )


def test_r1_tiny_model_trains_end_to_end_on_the_think_trace(r1_model_dir, tmp_path):
    rows = [
        {"messages": [user(f"What is {a} + {b}?"), assistant(f"\\boxed{{{a + b}}}", f"{a} + {b} = {a + b}")]}
        for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 9), (4, 4), (6, 1), (8, 3)]
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = thinktune("data", "inspect", str(data), "-n", "1", "--model", str(r1_model_dir), "--no-color")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[[<think>\n1 + 2 = 3\n</think>\n\n\\boxed{3}<｜end▁of▁sentence｜>]]" in r.stdout
    assert "parity ok" in r.stdout and "does not write this turn's reasoning" in r.stdout
    out = tmp_path / "run"
    r = thinktune(
        "train", "-o", str(out), "--set", f"model.name_or_path={r1_model_dir}", "--set", f"data.train=[{data}]",
        "--set", f"data.test={data}", "--set", "train.max_steps=2", "--set", "train.batch_size=4",
        "--set", "eval.max_samples=2", "--set", "eval.max_new_tokens=4", "--set", "data.max_length=256",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "adapter" / "adapter_config.json").is_file()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m for m in metrics)


def test_eval_prompts_follow_the_thinking_switch(qwen3):
    from thinktune.eval.runner import task_prompts

    tasks = [
        {"prompt": [{"role": "user", "content": "3 + 4?", "reasoning": None}], "meta": {}},
        {"prompt": [{"role": "user", "content": "Hi", "reasoning": None}], "meta": {"enable_thinking": False}},
    ]
    empty = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    auto = task_prompts(qwen3, tasks, None, "auto")
    assert not auto[0].endswith(empty) and auto[1].endswith(empty)  # the task's own flag, else thinking
    assert all(p.endswith(empty) for p in task_prompts(qwen3, tasks, None, "off"))
    assert not any(p.endswith(empty) for p in task_prompts(qwen3, tasks, None, "on"))


def test_parity_diff_never_cuts_a_character(r1):
    """R1's tool markers are not tokens: byte-level pieces split '｜' (3 bytes), so a naive window shows '\ufffd'."""
    from thinktune.data.render import _around

    ids = r1('<｜tool▁outputs▁end｜>"The Dark Knight', add_special_tokens=False)["input_ids"]
    naive = [r1.decode(ids[max(k - 3, 0) : k + 3]) for k in range(len(ids))]
    assert any("\ufffd" in t for t in naive)  # the case exists in this vocabulary
    assert not any("\ufffd" in _around(r1, ids, k) for k in range(len(ids)))
