"""An Ollama `Modelfile` for an exported GGUF: `ollama create NAME -f Modelfile`, then `ollama run NAME`.

Ollama templates are Go templates, not Jinja, so a chat template cannot be carried over in general. ChatML
(`<|im_start|>role\\n…<|im_end|>`, used by SmolLM2 and Qwen) is converted; for any other template the Modelfile has
no TEMPLATE and Ollama falls back to its own detection from the chat template stored in the GGUF.
"""

from __future__ import annotations

import re
from pathlib import Path

CHATML_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

# A template that writes a fixed system turn when the conversation has none (SmolLM2 does).
_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system\n(.+?)<\|im_end\|>", re.DOTALL)


def is_chatml(chat_template: str | None) -> bool:
    return bool(chat_template) and "<|im_start|>" in chat_template and "<|im_end|>" in chat_template


def default_system_prompt(chat_template: str | None) -> str | None:
    """The literal system message a ChatML template inserts when none is given, if any."""
    match = _DEFAULT_SYSTEM.search(chat_template or "")
    if not match or "{{" in match.group(1) or "'" in match.group(1):
        return None
    return match.group(1)


def modelfile_text(gguf_name: str, chat_template: str | None, stops: list[str]) -> str:
    lines = [f"FROM ./{gguf_name}", ""]
    if is_chatml(chat_template):
        lines += [f'TEMPLATE """{CHATML_TEMPLATE}"""', ""]
        system = default_system_prompt(chat_template)
        if system:
            lines += [f'SYSTEM """{system}"""', ""]
    else:
        lines += ["# chat template is not ChatML: Ollama uses the template stored in the GGUF", ""]
    lines += [f'PARAMETER stop "{_quote(s)}"' for s in dict.fromkeys(stops)]
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: Path, chat_template: str | None, stops: list[str]) -> Path:
    path = gguf_path.parent / "Modelfile"
    path.write_text(modelfile_text(gguf_path.name, chat_template, stops))
    return path


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
