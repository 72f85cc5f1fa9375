"""Which writing system a text is mostly in: a cheap stand-in for language identification.

Counts letters per Unicode script range (regexes run in C, so this keeps up with tokenisation). Kana decides
Japanese and Hangul Korean even when Han characters dominate; otherwise the script with most letters wins.
"""

from __future__ import annotations

import re

SCRIPTS: dict[str, re.Pattern] = {
    "latin": re.compile(r"[A-Za-z\u00c0-\u024f\u1e00-\u1eff]"),
    "cyrillic": re.compile(r"[\u0400-\u052f]"),
    "greek": re.compile(r"[\u0370-\u03ff]"),
    "arabic": re.compile(r"[\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff]"),
    "hebrew": re.compile(r"[\u0590-\u05ff]"),
    "devanagari": re.compile(r"[\u0900-\u097f]"),
    "thai": re.compile(r"[\u0e00-\u0e7f]"),
    "hangul": re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]"),
    "kana": re.compile(r"[\u3040-\u30ff]"),
    "han": re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff]"),
}
SAMPLE_CHARS = 4000  # the start of a text tells its script; long reasoning traces need not be scanned whole


def detect_script(text: str) -> str:
    """`latin`, `cyrillic`, `greek`, `arabic`, `hebrew`, `devanagari`, `thai`, `japanese`, `korean`, `chinese`,
    or `none` for text without letters (numbers, symbols)."""
    sample = text[:SAMPLE_CHARS]
    counts = {name: len(p.findall(sample)) for name, p in SCRIPTS.items()}
    if counts["kana"]:
        return "japanese"
    if counts["hangul"] > counts["han"]:
        return "korean"
    name, n = max(counts.items(), key=lambda kv: kv[1])
    if n == 0:
        return "none"
    return {"han": "chinese", "hangul": "korean"}.get(name, name)
