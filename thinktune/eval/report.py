"""Evaluation reports: <name>.json (headline + every sample) and <name>.md (table + a few examples)."""

from __future__ import annotations

import json
from pathlib import Path

from thinktune.eval.runner import EvalResult


def write_report(
    result: EvalResult, out_dir: Path, name: str, title: str, more: dict | None = None
) -> tuple[Path, Path]:
    """`more`: optional sections (robustness, efficiency, lm_eval) written as their own tables."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / f"{name}.json"
    payload = {"headline": result.headline(), **(more or {}), "samples": result.samples}
    js.write_text(json.dumps(payload, indent=1, ensure_ascii=False, default=str))
    h = result.headline()
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    for k, v in h.items():
        lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    for section, values in (more or {}).items():
        lines += ["", f"## {section}", "", "```json", json.dumps(values, indent=1, default=str), "```"]
    lines += ["", "## Examples", ""]
    for s in result.samples[:5]:
        mark = "correct" if s["correct"] else "wrong"
        lines += [
            f"**Q:** {s['prompt']}",
            "",
            "```",
            s["output"],
            "```",
            f"predicted `{s['predicted']}`, "
            f"reference `{s['answer']}` ({mark}, format {'ok' if s['format_ok'] else 'bad'})",
            "",
        ]
    md = out_dir / f"{name}.md"
    md.write_text("\n".join(lines))
    return js, md
