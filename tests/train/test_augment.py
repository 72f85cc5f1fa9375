"""data.augment in SFT training on a tiny model: what make_batch builds changes per epoch, is the same for the same
seed and on resume; back-translation through a local OpenAI-compatible endpoint (real `openai` client) keeps the
answer and reasoning and asks the teacher once; bad augmenters and unreachable teachers are one-line CLI errors."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence

import pytest
from rich.console import Console

from tests.fake_openai import ChatEndpoint, serving
from tests.test_cli_errors import assert_one_line_user_error, run_cli
from thinktune.config import load_config
from thinktune.data.augment import (
    BackTranslation,
    TemplateVariation,
    augment_record,
    plan,
    translate_prompts,
)
from thinktune.data.spec import BackTranslationConfig
from thinktune.train import sft
from thinktune.train.engine.loggers import read_metrics
from thinktune.train.sft import run_sft
from thinktune.train.translator import translator

QUIET = Console(quiet=True)
TRAIN = "data.train=['bundled:arithmetic/train[:8]']"


def sets(model_dir, out, *extra):
    return [
        f"model.name_or_path={model_dir}",
        f"output_dir={out}",
        TRAIN,
        "data.test=null",
        "data.max_length=512",
        f"data.cache_dir={out.parent / 'cache'}",
        "train.epochs=2",
        "train.batch_size=4",
        "train.learning_rate=5e-3",
        "eval.before=false",
        "eval.after=false",
        *extra,
    ]


class Recording(Sequence):
    """An epoch's samples that note every sample make_batch reads (index, input_ids, labels)."""

    def __init__(self, samples, log):
        self._samples, self._log = samples, log

    def __len__(self):
        return len(self._samples)

    def __getitem__(self, i):
        s = self._samples[i]
        self._log.append((i, tuple(s.input_ids), tuple(s.labels)))
        return s

    def __getattr__(self, name):
        return getattr(self._samples, name)


@pytest.fixture
def trained(monkeypatch):
    """run(config sets, resume) → {epoch: [(index, input_ids, labels) as make_batch read them]}."""
    real = sft.epoch_samples

    def run(args, resume=None):
        seen = defaultdict(list)

        def spy(data, tokenizer, cfg, epoch, *rest, **kw):
            return Recording(real(data, tokenizer, cfg, epoch, *rest, **kw), seen[epoch])

        monkeypatch.setattr(sft, "epoch_samples", spy)
        summary = run_sft(load_config(None, args), QUIET, resume)
        return dict(seen), summary

    return run


def prompt_and_completion(tokenizer, ids, labels):
    prompt = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab == -100])
    completion = tokenizer.decode([lab for lab in labels if lab != -100])
    return prompt, completion


def test_two_epochs_train_different_prompts_same_for_the_seed_and_on_resume(
    tiny_model_dirs, tiny_tokenizer, trained, tmp_path
):
    model = tiny_model_dirs["llama"]
    aug = "data.augment.template_fraction=0.5"
    seen, summary = trained(sets(model, tmp_path / "a", aug))
    assert summary["steps"] == 4 and sorted(seen) == [0, 1]  # 8 samples, batch 4: 2 steps per epoch
    views = {e: [prompt_and_completion(tiny_tokenizer, ids, labels) for _, ids, labels in seen[e]] for e in seen}
    prompts = {e: Counter(p for p, _ in views[e]) for e in views}
    print("\nepoch 0 prompts:", *sorted(prompts[0]), "\nepoch 1 prompts:", *sorted(prompts[1]), sep="\n  ")
    assert prompts[0] != prompts[1]  # the epochs train differently worded prompts
    assert Counter(c for _, c in views[0]) == Counter(c for _, c in views[1])  # the same answers and reasoning
    counts = summary["augmented_samples"]
    assert set(counts) == {"0", "1"} and all(0 < c["templates"] < 8 for c in counts.values())
    # the same seed: the same samples in the same order (a fresh cache, so nothing is reused)
    again, _ = trained(sets(model, tmp_path / "b", aug))
    assert again == seen
    other, _ = trained(sets(model, tmp_path / "c", aug, "data.seed=7"))
    assert [x[1] for x in other[0]] != [x[1] for x in seen[0]]
    # resume in the middle of epoch 1 (step 3 of 4): the rest of the epoch reads the uninterrupted run's samples
    out = tmp_path / "r"
    trained(sets(model, out, aug, "train.save_steps=1", "train.save_total_limit=4"))
    resumed, summary = trained(sets(model, out, aug, "train.save_steps=1"), resume=str(out / "checkpoints/step-3"))
    assert sorted(resumed) == [1] and resumed[1] == seen[1][4:]  # epoch 1's second batch, as uninterrupted
    full = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl")}
    after = {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl")}
    assert after[4] == pytest.approx(full[4], rel=1e-5)


def test_off_unless_configured(tiny_model_dirs, trained, tmp_path):
    seen, summary = trained(sets(tiny_model_dirs["llama"], tmp_path / "a", "train.max_steps=1"))
    assert seen == {} and "augmented_samples" not in summary  # no epoch samples asked for: the same every epoch


def test_augmenters_chain_in_order():
    rec = {
        "messages": [
            {"role": "user", "content": "What is 2 + 3?", "reasoning": None},
            {"role": "assistant", "content": "5", "reasoning": "2 + 3 = 5"},
        ],
        "meta": {"source": "f", "line": 1},
    }
    tpl = TemplateVariation(1.0, ("Question: {prompt}\nAnswer:",))
    bt = BackTranslation(1.0, "French", {"What is 2 + 3?": "How much is 2 plus 3?"})
    out = augment_record(rec, plan([tpl, bt], "f:1:0", 0, 0))
    assert out["messages"][0]["content"] == "Question: How much is 2 plus 3?\nAnswer:"
    assert out["meta"]["augmented"] == "templates:0+back_translation:French"
    assert out["messages"][1] == rec["messages"][1] and rec["messages"][0]["content"] == "What is 2 + 3?"
    untranslated = BackTranslation(1.0, "French", {})
    assert augment_record(rec, plan([untranslated], "f:1:0", 0, 0)) is rec  # nothing to swap in: unchanged


def test_round_trips_that_change_a_number_are_not_used():
    def generate(prompts):  # there: tag; back: a faithful one, one that loses a number, one that changes one
        out = []
        for p in prompts:
            text = p.rsplit("\n\n", 1)[1]
            if "into French" in p:
                out.append(f"[fr] {text}")
            else:
                text = text.removeprefix("[fr] ")
                out.append(
                    {"Add 2 and 3.": "Sum 2 and 3.", "Take 10 from 12.": "Take ten from 12."}.get(text, "Add 4 to 5.")
                )
        return out

    table = translate_prompts(["Add 2 and 3.", "Take 10 from 12.", "Add 4 to 7."], generate)
    assert table == {"Add 2 and 3.": "Sum 2 and 3.", "Take 10 from 12.": None, "Add 4 to 7.": None}


# ---- back-translation through an OpenAI-compatible endpoint ----


class Translator(ChatEndpoint):
    """Translates into French by tagging the text, and back into English by rewording the tag away."""

    model_id = "translator"
    requests: list[str] = []

    def answer(self, req):
        prompt = req["messages"][-1]["content"]
        Translator.requests.append(prompt)
        text = prompt.split("\n\n", 1)[1]
        if "into French" in prompt:
            return {"role": "assistant", "content": f"[fr] {text}"}
        back = "<think>\nback to English\n</think>\n\nIn other words: " + text.removeprefix("[fr] ")
        return {"role": "assistant", "content": back}


@pytest.fixture
def endpoint():
    Translator.requests = []
    with serving(Translator) as url:
        yield url


def test_translator_round_trip_through_the_endpoint(endpoint):
    generate = translator(BackTranslationConfig(teacher=endpoint))
    table = translate_prompts(["What is 2 + 3?", "Name 4 primes."], generate)
    assert table == {
        "What is 2 + 3?": "In other words: What is 2 + 3?",
        "Name 4 primes.": "In other words: Name 4 primes.",
    }
    assert len(Translator.requests) == 4 and "into French" in Translator.requests[0]


def test_back_translation_trains_paraphrases_keeps_answers_and_asks_once(
    tiny_model_dirs, tiny_tokenizer, trained, endpoint, tmp_path
):
    model = tiny_model_dirs["llama"]
    bt = [
        "data.augment.augmenters=[back_translation]",
        f"data.augment.back_translation.teacher={endpoint}",
        "data.augment.back_translation.fraction=1.0",
    ]
    seen, summary = trained(sets(model, tmp_path / "a", *bt))
    assert len(Translator.requests) == 2 * 8  # 8 prompts, there and back, before training
    assert summary["augmented_samples"] == {"0": {"back_translation": 8}, "1": {"back_translation": 8}}
    records = [json.loads(x) for x in open(sft.__file__.replace("train/sft.py", "data/bundled/arithmetic_train.jsonl"))]
    originals = {r["messages"][0]["content"]: r["messages"][1] for r in records[:8]}
    for _, ids, labels in seen[0]:
        prompt, completion = prompt_and_completion(tiny_tokenizer, ids, labels)
        question = prompt.split("In other words: ", 1)[1].split("<|im_end|>")[0]  # the tiny ChatML template
        answer = originals[question]
        assert answer["reasoning_content"] in completion and answer["content"] in completion
    # a second run (same cache) asks the teacher nothing and trains the same samples
    again, _ = trained(sets(model, tmp_path / "b", *bt))
    assert len(Translator.requests) == 16 and again == seen
    # data inspect shows the same back-translated sample
    r = run_cli(
        [
            "data",
            "inspect",
            "bundled:arithmetic/train",
            "-n",
            "1",
            "--epoch",
            "0",
            "--model",
            str(model),
            "--no-color",
            "--set",
            TRAIN.replace("[:8]", "[:1]"),
            *(x for b in bt for x in ("--set", b)),
            "--set",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],  # fmt: skip
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "augmented in epoch 0: back_translation:French" in r.stdout
    first = records[0]["messages"]
    assert f"In other words: {first[0]['content']}" in r.stdout and first[1]["reasoning_content"] in r.stdout
    assert len(Translator.requests) == 16  # from the cache


# ---- one-line errors ----


def test_unknown_augmenter_is_one_line(tmp_path):
    r = run_cli(["train", "--set", "data.augment.augmenters=[templates,shuffle]"], tmp_path)
    assert_one_line_user_error(r, "unknown augmenter 'shuffle'", "templates, back_translation")
    r = run_cli(["data", "inspect", "x.jsonl", "--epoch", "1", "--set", "data.augment.augmenters=[shuffle]"], tmp_path)
    assert_one_line_user_error(r, "unknown augmenter 'shuffle'")


def test_unreachable_teacher_is_one_line(tiny_model_dirs, tmp_path):
    r = run_cli(
        [
            "train",
            *(x for s in sets(tiny_model_dirs["llama"], tmp_path / "run") for x in ("--set", s)),
            "--set",
            "data.augment.augmenters=[back_translation]",
            "--set",
            "data.augment.back_translation.teacher=http://127.0.0.1:9/v1",
        ],  # fmt: skip
        tmp_path,
        timeout=300,
    )
    # the model loads first (its progress bars on stderr); then the teacher is asked, before any training
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [r.stderr.strip().splitlines()[-1]]
    assert errors[0] == "error: data.augment.back_translation.teacher http://127.0.0.1:9/v1: Connection error."


def test_data_stats_and_inspect_show_an_epoch(tiny_model_dirs, tmp_path):
    model = str(tiny_model_dirs["llama"])
    args = ["bundled:arithmetic/train[:40]", "--model", model, "--epoch", "1"]
    r = run_cli(["data", "stats", *args, "--no-png", "--json", "--set", "data.augment.template_fraction=0.5"], tmp_path)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert (
        stats["epoch"] == 1
        and 10 < stats["augmented"] < 30
        and stats["augmenters"] == {"templates": stats["augmented"]}
    )
    r = run_cli(["data", "inspect", *args, "-n", "3", "--set", "data.augment.template_fraction=1"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("augmented in epoch 1: templates:") == 3
    assert_one_line_user_error(run_cli(["data", "inspect", *args], tmp_path), "--epoch 1: no augmentation configured")
    r = run_cli(["data", "stats", "bundled:arithmetic/train", "--set", "data.seed=1"], tmp_path)
    assert_one_line_user_error(r, "add --epoch N")
