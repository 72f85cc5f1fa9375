"""Export verification: every parity figure has a limit; beyond it `thinktune export` exits 1 naming the figure."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from thinktune.cli import app
from thinktune.export.verify import TOP1_AT_LEAST, checks, verify

GOOD_GGUF = {
    "gguf_type": "q8_0",
    "tokenizer_identical": True,
    "chat_template_identical": True,
    "max_abs_logit_diff": 0.3,
    "top1_agreement": 0.97,
}


LOGITS_TOP1 = ["max_abs_logit_diff", "top1_agreement"]
TEMPLATE_CHECKS = ["top1_agreement", "tokenizer_identical", "chat_template_identical"]
LLAMA_CPP = {"tokenizer_identical": True, "top1_agreement": 0.9}


@pytest.mark.parametrize(
    ("fmt", "record", "figures"),
    [
        ("gguf", GOOD_GGUF, TEMPLATE_CHECKS),
        ("gguf", {"gguf_type": "f32", "max_abs_logit_diff": 0, "top1_agreement": 1.0}, LOGITS_TOP1),
        ("onnx", {"max_abs_logit_diff": 1e-5, "top1_agreement": 1.0}, LOGITS_TOP1),
        ("merged", {"dtype": "bfloat16", "max_abs_logit_diff": 0.2, "top1_agreement": 0.95}, ["top1_agreement"]),
        (
            "int8",
            {"max_abs_logit_diff_fp32_onnx": 1e-5, "top1_agreement": 0.9},
            ["max_abs_logit_diff_fp32_onnx", "top1_agreement"],
        ),
        (
            "gguf",
            {**GOOD_GGUF, "llama_cpp": LLAMA_CPP},
            [*TEMPLATE_CHECKS, "llama_cpp.tokenizer_identical", "llama_cpp.top1_agreement"],
        ),
    ],
)
def test_every_figure_has_a_limit(fmt, record, figures):
    assert [c.figure for c in checks(fmt, record)] == figures
    record = json.loads(json.dumps(record))
    assert verify(fmt, record) == [] and record["verified"] is True
    assert all(row["passed"] and row["limit"] for row in record["checks"])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"top1_agreement": 0.5}, "top1_agreement 0.5 (limit ≥ 0.85)"),
        ({"tokenizer_identical": False}, "tokenizer_identical False (limit = True)"),
        ({"llama_cpp": {"tokenizer_identical": True, "top1_agreement": 0.1}}, "llama_cpp.top1_agreement 0.1"),
        ({"llama_cpp": {"top1_agreement": 0.99}}, "llama_cpp.tokenizer_identical None"),  # a missing figure fails
    ],
)
def test_a_figure_beyond_its_limit_is_named(change, named):
    record = {**GOOD_GGUF, **change}
    failed = verify("gguf", record)
    assert len(failed) == 1 and failed[0].startswith(named), failed
    assert record["verified"] is False


def test_export_exits_1_naming_the_figure(export_models, tmp_path, monkeypatch):
    """A real q8_0 export held to an impossible limit: exit 1, the figure named, the artefact and its figures kept."""
    model_dir, adapter = export_models["llama"]
    monkeypatch.setitem(TOP1_AT_LEAST, "q8_0", 1.01)
    out = tmp_path / "gguf"
    args = ["export", "--model", str(model_dir), "--adapter", str(adapter), "--format", "gguf", "--gguf-type", "q8_0"]
    result = CliRunner().invoke(app, [*args, "-o", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "gguf export beyond tolerance: top1_agreement" in result.output and "(limit ≥ 1.01)" in result.output
    assert "FAILED" in result.output and "Traceback" not in result.output
    record = json.loads((out / "verify.json").read_text())
    row = next(r for r in record["checks"] if r["figure"] == "top1_agreement")
    assert row == {"figure": "top1_agreement", "value": record["top1_agreement"], "limit": "≥ 1.01", "passed": False}
    assert record["verified"] is False and len(list(out.glob("*.gguf"))) == 1

    result = CliRunner().invoke(app, [*args, "-o", str(out), "--no-verify"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert json.loads((out / "verify.json").read_text())["verified"] is False


def test_check_with_is_refused_where_it_cannot_run(export_models, tmp_path):
    model_dir, _ = export_models["llama"]
    runner = CliRunner()
    for extra, needle in [
        (["--format", "merged", "--check-with", "llama-cpp"], "checks GGUF files; --format merged has none"),
        (["--format", "gguf", "--check-with", "vllm"], "--check-with vllm: unknown runtime; choose llama-cpp"),
    ]:
        result = runner.invoke(app, ["export", "--model", str(model_dir), *extra, "-o", str(tmp_path / "o")])
        assert result.exit_code == 2, result.output
        assert needle in result.output and "Traceback" not in result.output
