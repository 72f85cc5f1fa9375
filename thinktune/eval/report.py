"""Evaluation reports: <name>.json (headline + every sample) and <name>.md (table + a few examples)."""

from __future__ import annotations

import json
from pathlib import Path

from thinktune.eval.runner import EvalResult


def write_report(result: EvalResult, out_dir: Path, name: str, title: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / f"{name}.json"
    js.write_text(json.dumps({"headline": result.headline(), "samples": result.samples}, indent=1, ensure_ascii=False))
    h = result.headline()
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    for k in ("accuracy", "format_compliance", "mean_think_tokens", "mean_output_tokens", "loss", "perplexity", "n"):
        v = h[k]
        lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
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
