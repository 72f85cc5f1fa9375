"""Tolerances for an export's parity figures: beyond one, `thinktune export` fails (exit 1) naming the figure.

Each exporter measures its artefact against the source (logits on the same ids, greedy continuations, tokenizer);
`checks(fmt, record)` lists the limits those figures must meet, `verify` records each limit beside its figure
(`verify.json` → `checks`) and returns the failures. The limits are floors that a correct export of a real model clears
with a wide margin and a broken one (wrong tensor layout, tokenizer, RoPE) does not: tiny random test models have
near-tied logits, so top-1 agreement at 4 bits is as low as 0.4 for them and above 0.85 for SmolLM2. Greedy identity
is recorded, not limited: one flipped near-tie changes every later token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from thinktune.errors import CheckFailed

# Teacher-forced top-1 agreement with the source, by the precision of the artefact's weights.
TOP1_AT_LEAST = {
    "float32": 0.999,
    "f32": 0.999,
    "float16": 0.98,
    "f16": 0.98,
    "bfloat16": 0.9,
    "bf16": 0.9,
    "q8_0": 0.85,
    "int8": 0.75,
    "q4_0": 0.35,
    "q4_1": 0.35,
    "nf4": 0.35,
}
# Largest |logit difference| where the artefact computes in float32 from the same float32 weights.
FLOAT32_LOGIT_DIFF_AT_MOST = 1e-2


class VerificationFailed(CheckFailed):
    """An artefact's parity figure is beyond its tolerance; `record` holds every figure and check."""

    def __init__(self, message: str, record: dict[str, Any]):
        super().__init__(message)
        self.record = record


@dataclass(frozen=True)
class Check:
    figure: str  # dotted path into the record: "top1_agreement", "llama_cpp.tokenizer_identical"
    at_least: float | None = None
    at_most: float | None = None
    equals: Any = None

    def passes(self, value: Any) -> bool:
        if self.equals is not None:
            return value == self.equals
        if not isinstance(value, int | float):
            return False
        return (self.at_least is None or value >= self.at_least) and (self.at_most is None or value <= self.at_most)

    def limit(self) -> str:
        if self.equals is not None:
            return f"= {self.equals}"
        return " and ".join(f"{op} {v:g}" for op, v in (("≥", self.at_least), ("≤", self.at_most)) if v is not None)


def checks(fmt: str, record: dict[str, Any]) -> list[Check]:
    """The limits for one export record."""
    out: list[Check] = []
    precision = _precision(fmt, record)
    float32 = (fmt == "merged" and precision == "float32") or (precision == "f32" and fmt != "gguf-lora")
    if fmt in ("adapter", "onnx") or float32:
        out.append(Check("max_abs_logit_diff", at_most=FLOAT32_LOGIT_DIFF_AT_MOST))
    if fmt == "int8" and "max_abs_logit_diff_fp32_onnx" in record:
        out.append(Check("max_abs_logit_diff_fp32_onnx", at_most=FLOAT32_LOGIT_DIFF_AT_MOST))
    if "top1_agreement" in record:
        out.append(Check("top1_agreement", at_least=TOP1_AT_LEAST.get(precision, TOP1_AT_LEAST["int8"])))
    for flag in ("tokenizer_identical", "chat_template_identical"):
        if flag in record:
            out.append(Check(flag, equals=True))
    if "llama_cpp" in record:
        out.append(Check("llama_cpp.tokenizer_identical", equals=True))
        out.append(Check("llama_cpp.top1_agreement", at_least=TOP1_AT_LEAST.get(precision, 0.35)))
        if fmt == "gguf-lora" and precision == "f32":  # llama.cpp's own float32 kernels against PyTorch's
            out.append(Check("llama_cpp.max_abs_logit_diff", at_most=FLOAT32_LOGIT_DIFF_AT_MOST))
    return out


def verify(fmt: str, record: dict[str, Any]) -> list[str]:
    """Add `checks` (figure, value, limit, passed) to the record; return one line per failed figure."""
    rows, failed = [], []
    for check in checks(fmt, record):
        value = _lookup(record, check.figure)
        passed = check.passes(value)
        rows.append({"figure": check.figure, "value": value, "limit": check.limit(), "passed": passed})
        if not passed:
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            failed.append(f"{check.figure} {shown} (limit {check.limit()})")
    record["checks"] = rows
    record["verified"] = not failed
    return failed


def _precision(fmt: str, record: dict[str, Any]) -> str:
    if fmt in ("gguf", "gguf-lora"):
        return record.get("gguf_type", "f16")
    if fmt == "merged":
        return record.get("dtype") or "float32"
    if fmt == "int8":
        return "nf4" if "NF4" in str(record.get("method", "")) else "int8"
    return "float32"


def _lookup(record: dict[str, Any], figure: str) -> Any:
    value: Any = record
    for part in figure.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
