"""The UI's model work: a question to the base model and to a run's trained model side by side (serve/chat.py's
ChatSession), and `thinktune eval --compare` over chosen runs (eval/compare.py) into the runs directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from thinktune.errors import UserError
from thinktune.runs import open_run

if TYPE_CHECKING:
    from thinktune.ui.app import UIState


def loaded(state: UIState, name: str) -> tuple[Any, Any, Any]:
    """((base model, tok, vision), (trained model, tok, vision), config) of run `name`, loaded once."""
    from thinktune.models import load_pretrained
    from thinktune.models.vision import load_vision
    from thinktune.runs import load_trained

    with state.lock:
        if name not in state.chat_models:
            run = open_run(state.run_path(name))
            cfg = run.read_config()
            if run.produced() is None:
                raise UserError(f"{name}: has not saved a trained model yet")
            base, tok, source = load_pretrained(cfg.model)
            tuned, tok2, _ = load_pretrained(cfg.model)
            tuned = load_trained(tuned, run.path)
            state.chat_models[name] = (
                (base, tok, load_vision(base, source.path)),
                (tuned, tok2, load_vision(tuned, source.path)),
                cfg,
            )
        return state.chat_models[name]


def to_messages(history: list[dict]) -> list[dict]:
    """Chatbot messages → ChatSession history (thinking messages left out, as the model's history leaves them)."""
    out = []
    for m in history or []:
        if (m.get("metadata") or {}).get("title"):
            continue
        content = m["content"] if isinstance(m["content"], str) else str(m["content"])
        out.append({"role": m["role"], "content": content, "reasoning": None})
    return out


def answer_messages(thinking: str | None, answer: str) -> list[dict]:
    """The reply as Chatbot messages: the thinking as a collapsible message, then the answer."""
    shown = [{"role": "assistant", "content": thinking, "metadata": {"title": "thinking"}}] if thinking else []
    return [*shown, {"role": "assistant", "content": answer}]


def ask_both(state, name, text, thinking, do_sample, temperature, max_new, hist_base, hist_tuned):
    from thinktune.serve.chat import ChatSession

    if not name:
        raise UserError("pick a run to chat with")
    if not text or not text.strip():
        raise UserError("type a message")
    base, tuned, cfg = loaded(state, name)
    out = []
    for (model, tok, vision), hist in ((base, hist_base), (tuned, hist_tuned)):
        session = ChatSession(
            model, tok, cfg.data.system_prompt, max_new, thinking, do_sample, temperature, vision=vision
        )
        session.history = to_messages(hist)
        with state.lock:  # one generation at a time: the CPU cores are shared
            thought, reply = session.ask(text)
        out.append([*(hist or []), {"role": "user", "content": text}, *answer_messages(thought, reply)])
    return out[0], out[1]


def compare_runs(state: UIState, names: list[str], with_base: bool) -> tuple[str, list[Path]]:
    """report.md text and chart paths of `thinktune eval --compare` over the runs (and the base), written to
    <runs>/compare-<names>/."""
    from rich.console import Console

    from thinktune.eval.compare import compare_models

    runs = [open_run(state.run_path(n)) for n in names]
    if len(runs) + with_base < 2:
        raise UserError("pick two runs, or one run and the base model")
    cfg = runs[0].read_config()
    out = state.run_path("compare-" + "-".join(names))
    candidates = (["base"] if with_base else []) + [str(r.path) for r in runs]
    with state.lock:
        compare_models(cfg, candidates, out, Console(quiet=True))
    return (out / "report.md").read_text(), sorted((out / "charts").glob("*.png"))
