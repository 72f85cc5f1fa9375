"""Training losses: agreement with transformers' loss, hand-computed tables, tiny teacher → student distillation."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.tiny_models import build_tiny_model
from thinktune.config import TrainConfig
from thinktune.errors import ConfigError
from thinktune.train.engine.losses import (
    causal_lm_loss,
    combined_loss,
    contrastive_margin_loss,
    distillation_loss,
    repetition_unlikelihood_loss,
)

IGNORE = -100


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine their spinning costs 10-30×."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shifted(per_position: list[list[list[float]]], targets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) where the logits at position t are scored against targets[t] (labels carry the shift)."""
    logits = torch.tensor(per_position, dtype=torch.float32)
    logits = torch.cat([logits, torch.zeros_like(logits[:, :1])], dim=1)  # last position predicts nothing
    labels = torch.tensor([[IGNORE, *row] for row in targets])
    return logits, labels


def padded_batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two rows: a prompt (not trained) then an answer (trained); the second row right-padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (2, 12), generator=g)
    labels = ids.clone()
    labels[:, :4] = IGNORE
    mask = torch.ones_like(ids)
    ids[1, 9:], labels[1, 9:], mask[1, 9:] = 0, IGNORE, 0
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


@pytest.fixture(scope="module")
def llama(tiny_model_dirs):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]).eval()


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_causal_lm_loss_equals_model_loss(tiny_model_dirs, arch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch]).eval()
    batch = padded_batch(model.config.vocab_size)
    with torch.no_grad():
        out = model(**batch)
    torch.testing.assert_close(causal_lm_loss(out.logits, batch["labels"]), out.loss, atol=1e-5, rtol=0)


def test_label_smoothing_raises_the_loss_of_a_confident_model():
    confident, labels = shifted([[[8.0, 0.0, 0.0, 0.0], [0.0, 8.0, 0.0, 0.0]]], [[0, 1]])
    plain = causal_lm_loss(confident, labels)
    smoothed = causal_lm_loss(confident, labels, label_smoothing=0.1)
    assert plain < 0.01 and smoothed > plain + 0.5
    # Smoothed CE = (1 − ε)·CE + ε·mean over the vocabulary of −log p.
    log_p = torch.log_softmax(confident[0, :2], dim=-1)
    expected = 0.9 * plain + 0.1 * (-log_p.mean(dim=-1)).mean()
    torch.testing.assert_close(smoothed, expected)
    # On a uniform prediction smoothing changes nothing: every token already costs log V.
    uniform, labels = shifted([[[0.0] * 4]], [[2]])
    torch.testing.assert_close(causal_lm_loss(uniform, labels, 0.1), torch.tensor(math.log(4)))


@pytest.mark.parametrize(
    "loss_fn",
    [
        causal_lm_loss,
        repetition_unlikelihood_loss,
        contrastive_margin_loss,
        lambda logits, labels: distillation_loss(logits, logits.detach().flip(-1), labels, 2.0, 0.5)[0],
    ],
    ids=["ce", "unlikelihood", "margin", "distill"],
)
def test_untrained_positions_get_no_gradient(loss_fn):
    batch = padded_batch(16)
    logits = torch.randn(2, 12, 16, requires_grad=True)
    loss_fn(logits, batch["labels"]).backward()
    trained = torch.zeros(2, 12, dtype=torch.bool)
    trained[:, :-1] = batch["labels"][:, 1:] != IGNORE
    assert logits.grad[~trained].abs().max() == 0
    assert logits.grad[trained].abs().sum() > 0


def test_losses_of_a_batch_without_trained_tokens_are_zero_and_differentiable():
    logits = torch.randn(1, 4, 8, requires_grad=True)
    labels = torch.full((1, 4), IGNORE)
    for fn in (causal_lm_loss, repetition_unlikelihood_loss, contrastive_margin_loss):
        loss = fn(logits, labels)
        loss.backward()
        assert loss.item() == 0


UNLIKELIHOOD_CASES = {
    # position 0 has no earlier target; position 1 (target 1) pushes down 0; position 2 (target 0) pushes down 1
    "earlier targets": (
        [[0, 1, 0]],
        [[[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.2, 0.6, 0.2]]],
        (0 - math.log(0.5) - math.log(0.4)) / 3,
    ),
    # a repeated earlier token counts once, and the current target is never its own candidate
    "each candidate once": (
        [[2, 2, 1]],
        [[[0.2, 0.3, 0.5], [0.2, 0.3, 0.5], [0.25, 0.25, 0.5]]],
        -math.log(0.5) / 3,
    ),
    # untrained targets neither count as positions nor as candidates
    "ignored targets": (
        [[1, IGNORE, 0]],
        [[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.5, 0.3, 0.2]]],
        -math.log(0.7) / 2,
    ),
    # candidates never come from another sequence of the batch
    "rows are separate": (
        [[0], [1]],
        [[[0.9, 0.05, 0.05]], [[0.9, 0.05, 0.05]]],
        0.0,
    ),
}


@pytest.mark.parametrize("targets,probs,expected", UNLIKELIHOOD_CASES.values(), ids=UNLIKELIHOOD_CASES.keys())
def test_repetition_unlikelihood_table(targets, probs, expected):
    logits, labels = shifted(torch.tensor(probs).log().tolist(), targets)
    torch.testing.assert_close(repetition_unlikelihood_loss(logits, labels), torch.tensor(expected))


MARGIN_CASES = {
    "gap above margin": ([3.0, 1.0, 0.0], 0, 1.0, 0.0),
    "wrong token on top": ([3.0, 1.0, 0.0], 1, 1.0, 3.0),
    "gap below margin": ([1.5, 1.0, 0.0], 0, 1.0, 0.5),
    "tie with the target": ([2.0, 2.0, 0.0], 0, 1.0, 1.0),
    "wider margin": ([3.0, 1.0, 0.0], 0, 3.0, 1.0),
}


@pytest.mark.parametrize("row,target,margin,expected", MARGIN_CASES.values(), ids=MARGIN_CASES.keys())
def test_contrastive_margin_table(row, target, margin, expected):
    logits, labels = shifted([[row]], [[target]])
    torch.testing.assert_close(contrastive_margin_loss(logits, labels, margin), torch.tensor(expected))


def test_contrastive_margin_is_the_mean_over_positions():
    logits, labels = shifted([[[3.0, 1.0, 0.0], [3.0, 1.0, 0.0], [1.5, 1.0, 0.0]]], [[0, 1, 0]])
    torch.testing.assert_close(contrastive_margin_loss(logits, labels), torch.tensor((0 + 3 + 0.5) / 3))


def test_distillation_kl_by_hand_and_the_alpha_mix():
    student, labels = shifted([[[0.0, 0.0]]], [[0]])
    teacher, _ = shifted([[[math.log(0.75), math.log(0.25)]]], [[0]])
    total, parts = distillation_loss(student, teacher, labels, temperature=1.0, alpha=1.0)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert parts["kl"] == pytest.approx(kl, abs=1e-6) and total.item() == pytest.approx(kl, abs=1e-6)
    # At temperature T the KL of the softened distributions is scaled by T².
    _, parts = distillation_loss(student, teacher * 2, labels, temperature=2.0, alpha=1.0)
    assert parts["kl"] == pytest.approx(4 * kl, abs=1e-5)
    total, parts = distillation_loss(student, teacher, labels, temperature=1.0, alpha=0.25)
    assert total.item() == pytest.approx(0.25 * kl + 0.75 * math.log(2), abs=1e-6)
    assert parts["ce"] == pytest.approx(math.log(2), abs=1e-6)


def test_distillation_needs_the_same_vocabulary():
    labels = torch.tensor([[IGNORE, 1]])
    with pytest.raises(ConfigError, match="vocabulary"):
        distillation_loss(torch.zeros(1, 2, 8), torch.zeros(1, 2, 9), labels, 2.0, 0.5)


def kl_on(student, teacher, batch) -> float:
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"]).logits
        t = teacher(input_ids=batch["input_ids"]).logits
    return distillation_loss(s, t, batch["labels"], temperature=1.0, alpha=1.0)[1]["kl"]


def random_sequences(vocab: int, n: int, length: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, vocab, (n, length), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def test_distillation_moves_the_student_toward_the_teacher(tiny_model_dirs, tmp_path, one_thread):
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
    teacher = AutoModelForCausalLM.from_pretrained(build_tiny_model("llama", tmp_path / "teacher", seed=1)).eval()
    vocab = student.config.vocab_size
    g = torch.Generator().manual_seed(0)
    held_out = random_sequences(vocab, 8, 32, g)
    before = kl_on(student.eval(), teacher, held_out)

    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    student.train()
    for _ in range(30):
        batch = random_sequences(vocab, 8, 32, g)  # fresh inputs each step: learn the teacher, not a sample
        with torch.no_grad():
            teacher_logits = teacher(input_ids=batch["input_ids"]).logits
        logits = student(input_ids=batch["input_ids"]).logits
        loss, _ = distillation_loss(logits, teacher_logits, batch["labels"], temperature=2.0, alpha=1.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = kl_on(student.eval(), teacher, held_out)
    print(f"held-out KL(teacher || student): {before:.4f} → {after:.4f}")
    assert after < 0.7 * before


def test_combined_loss_applies_what_the_config_enables(llama):
    batch = padded_batch(llama.config.vocab_size)
    with torch.no_grad():
        logits = llama(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]

    loss, parts = combined_loss(logits, batch, TrainConfig())
    torch.testing.assert_close(loss, causal_lm_loss(logits, labels))
    assert set(parts) == {"ce", "loss"}

    cfg = TrainConfig(label_smoothing=0.1, unlikelihood_weight=0.5, contrastive_weight=0.25)
    loss, parts = combined_loss(logits, batch, cfg)
    expected = (
        causal_lm_loss(logits, labels, 0.1)
        + 0.5 * repetition_unlikelihood_loss(logits, labels)
        + 0.25 * contrastive_margin_loss(logits, labels)
    )
    torch.testing.assert_close(loss, expected)
    assert set(parts) == {"ce", "unlikelihood", "contrastive", "loss"} and parts["loss"] == pytest.approx(loss.item())

    teacher_logits = logits.flip(-1)
    cfg = TrainConfig(teacher="some/teacher", distill_alpha=0.3, distill_temperature=3.0)
    loss, parts = combined_loss(logits, batch, cfg, teacher_logits)
    torch.testing.assert_close(loss, distillation_loss(logits, teacher_logits, labels, 3.0, 0.3)[0])
    assert set(parts) == {"ce", "kl", "loss"}
    with pytest.raises(ValueError, match="teacher"):
        combined_loss(logits, batch, cfg)
