"""`ollama create NAME -f Modelfile`, then `ollama run NAME` (in the folder of the exported GGUF).

The Modelfile written beside a GGUF export: FROM the GGUF, a TEMPLATE, stop tokens and sampling parameters. Ollama
renders chats with Go text/templates, not Jinja, so the model's chat template cannot be carried over as it is; the
families our users tune are recognised and written as Go templates that render what the Jinja template renders for
the same conversation (tests/export/test_modelfile_ollama.py checks this with Go's own text/template):

- Qwen3 (hybrid thinking): reasoning kept only for assistant turns after the last user query, tools, tool calls and
  tool responses; `ollama run NAME --think=false` closes the think block in the prompt as `enable_thinking=False`.
- DeepSeek-R1-Distill: system text, `<｜User｜>`/`<｜Assistant｜>` turns, earlier answers without their reasoning.
- ChatML (SmolLM2, the tests' tiny models): `<|im_start|>role\\n…<|im_end|>` turns, and the fixed system message
  the template inserts when a conversation has none, as SYSTEM. Other ChatML templates get these plain turns too;
  their own tool or reasoning handling, if any, is not carried over.

Any other template gets no TEMPLATE: Ollama then uses the chat template stored in the GGUF (recent versions run it
with llama.cpp; older ones match it against a few templates they know). Ollama parses the reasoning out of a thinking
model's answer (into `message.thinking`) only when the TEMPLATE wraps `.Thinking` in `<think>…</think>` inside its
range over `.Messages`: both thinking templates do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CHATML_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}<|im_start|>{{ .Role }}
{{ .Content }}
{{- if not (and $last (eq .Role "assistant")) }}<|im_end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""

# Ollama's thinking parser keeps the newline before </think> in `message.thinking`, and its tool parser the newline
# before <tool_call> in `content`; the Jinja templates strip them. Go templates have no string functions, so this
# drops one trailing newline by hand (ranging over an integer needs Go >= 1.22, which every Ollama build has).
_CHOMP = """
{{- define "chomp" }}{{ $s := . }}{{ range $k := len $s }}{{ if eq (slice $s $k) "\\n" }}{{ $s = slice $s 0 $k }}
{{- end }}{{ end }}{{ $s }}{{ end }}"""

# Qwen3's Jinja template (Qwen3-0.6B … 32B) in the shape of Ollama's own qwen3 template. The assistant's tool calls
# sit in the first `if .ToolCalls`, opened by `<tool_call>`: Ollama takes the tag that starts a tool call from there.
# `eq .Role "tool"` tells recent Ollama versions that tool results round-trip, so they keep this template.
QWEN3_TEMPLATE = (
    """{{- $lastQuery := -1 }}
{{- range $i, $_ := .Messages }}{{ if eq .Role "user" }}{{ $lastQuery = $i }}{{ end }}{{ end }}
{{- if eq $lastQuery -1 }}{{ $lastQuery = len .Messages }}{{ end }}
{{- $firstIsSystem := and .Messages (eq (index .Messages 0).Role "system") }}
{{- if .Tools }}<|im_start|>system
{{ if $firstIsSystem }}{{ (index .Messages 0).Content }}

{{ end }}# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{{ json . }}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{{ else if $firstIsSystem }}<|im_start|>system
{{ (index .Messages 0).Content }}<|im_end|>
{{ end }}
{{- $prev := "" }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (and (eq .Role "system") $i) }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}{{ $calls := .ToolCalls }}<|im_start|>assistant
{{ if and (gt $i $lastQuery) (or $last .Thinking) }}<think>
{{ template "chomp" .Thinking }}
</think>

{{ end }}{{ if $calls }}{{ template "chomp" .Content }}{{ if .Content }}
{{ end }}{{ else }}{{ .Content }}{{ end }}
{{- if .ToolCalls }}{{ range $j, $_ := $calls }}<tool_call>
{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
</tool_call>{{ if gt (len (slice $calls $j)) 1 }}
{{ end }}{{ end }}{{ end }}
{{- if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}
{{- if ne $prev "tool" }}<|im_start|>user{{ end }}
<tool_response>
{{ .Content }}
</tool_response>
{{- if or $last (ne (index (slice $.Messages $i) 1).Role "tool") }}<|im_end|>
{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ if and $.IsThinkSet (not $.Think) }}<think>

</think>

{{ end }}{{ end }}
{{- $prev = .Role }}
{{- end }}"""
    + _CHOMP
)

# DeepSeek-R1-Distill's Jinja template: the last system message's text, then the turns; an earlier answer keeps only
# what followed </think>, and R1 writes "</think>\n\n", which Ollama's parser removed from `content`. A final assistant
# message is continued (Ollama's prefill), with its reasoning: the only place `.Thinking` is written, and what gives
# the model Ollama's thinking capability. `{open_think}` is what the template's generation prompt adds after
# <｜Assistant｜>: newer revisions open the reasoning with "<think>\n".
R1_TEMPLATE = (
    """{{- $system := "" }}
{{- range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ end }}{{ end }}
{{- $system }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<｜User｜>{{ .Content }}
{{- else if and (eq .Role "assistant") (not $last) }}<｜Assistant｜>{{ if .Thinking }}

{{ end }}{{ .Content }}<｜end▁of▁sentence｜>
{{- else if eq .Role "assistant" }}<｜Assistant｜>{{ if .Thinking }}<think>
{{ template "chomp" .Thinking }}
</think>

{{ end }}{{ .Content }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<｜Assistant｜>{open_think}{{ end }}
{{- end }}"""
    + _CHOMP
)

CHATML_STOPS = ("<|im_start|>", "<|im_end|>")
R1_STOPS = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>")

# A template that writes a fixed system turn when the conversation has none (SmolLM2 does).
_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system\n(.+?)<\|im_end\|>", re.DOTALL)


@dataclass(frozen=True)
class OllamaChat:
    """How Ollama should run a chat template family: its Go TEMPLATE, turn markers to stop on, sampling."""

    family: str
    template: str
    stops: tuple[str, ...]
    parameters: tuple[tuple[str, float | int], ...] = ()
    system: str | None = None


def is_chatml(chat_template: str | None) -> bool:
    return bool(chat_template) and "<|im_start|>" in chat_template and "<|im_end|>" in chat_template


def is_qwen3(chat_template: str | None) -> bool:
    """Qwen3's hybrid thinking template: ChatML, `enable_thinking`, reasoning kept after the last user query."""
    return is_chatml(chat_template) and all(s in chat_template for s in ("enable_thinking", "last_query_index"))


def is_deepseek_r1(chat_template: str | None) -> bool:
    """DeepSeek-R1's template: full-width turn markers, reasoning split off earlier answers at </think>."""
    return bool(chat_template) and all(s in chat_template for s in ("<｜User｜>", "<｜Assistant｜>", "</think>"))


def default_system_prompt(chat_template: str | None) -> str | None:
    """The literal system message a ChatML template inserts when none is given, if any."""
    match = _DEFAULT_SYSTEM.search(chat_template or "")
    if not match or "{{" in match.group(1) or "'" in match.group(1):
        return None
    return match.group(1)


def ollama_chat(chat_template: str | None) -> OllamaChat | None:
    """The recognised family of a Jinja chat template, or None (then Ollama uses the GGUF's own template)."""
    if is_qwen3(chat_template):
        # Qwen3 model cards, thinking mode (non-thinking: 0.7 / 0.8 / 20; a Modelfile has one setting)
        sampling = (("temperature", 0.6), ("top_p", 0.95), ("top_k", 20))
        return OllamaChat("qwen3", QWEN3_TEMPLATE, CHATML_STOPS, sampling)
    if is_deepseek_r1(chat_template):
        open_think = "<think>\n" if "<｜Assistant｜><think>" in chat_template else ""
        # DeepSeek-R1 usage recommendations: temperature 0.5-0.7 (0.6), top-p 0.95
        template = R1_TEMPLATE.replace("{open_think}", open_think)
        return OllamaChat("deepseek-r1", template, R1_STOPS, (("temperature", 0.6), ("top_p", 0.95)))
    if is_chatml(chat_template):
        return OllamaChat("chatml", CHATML_TEMPLATE, CHATML_STOPS, system=default_system_prompt(chat_template))
    return None


def modelfile_text(gguf_name: str, chat_template: str | None, stops: list[str]) -> str:
    chat = ollama_chat(chat_template)
    lines = [f"FROM ./{gguf_name}", ""]
    if chat is None:
        lines += ["# chat template not recognised: Ollama uses the template stored in the GGUF", ""]
    else:
        lines += [f"# {chat.family} chat template, as a Go template (Ollama does not run Jinja)"]
        lines += [f'TEMPLATE """{_triple_quotable(chat.template)}"""', ""]
        if chat.system and '"""' not in chat.system:
            lines += [f'SYSTEM """{chat.system}"""', ""]
    # Ollama's Modelfile parser strips the outer quotes and reads no escapes: a `"` inside stays as it is
    lines += [f'PARAMETER stop "{s}"' for s in dict.fromkeys([*stops, *(chat.stops if chat else ())])]
    lines += [f"PARAMETER {name} {value}" for name, value in (chat.parameters if chat else ())]
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: Path, chat_template: str | None, stops: list[str]) -> Path:
    path = gguf_path.parent / "Modelfile"
    path.write_text(modelfile_text(gguf_path.name, chat_template, stops))
    return path


def _triple_quotable(text: str) -> str:
    if '"""' in text:  # a Modelfile value cannot hold its own delimiter
        raise ValueError('a Modelfile TEMPLATE cannot contain """')
    return text
