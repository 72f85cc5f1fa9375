"""`thinktune ui`: the Gradio app — Runs (list + live run page), Launch (the config form), Chat (base vs a run,
side by side), Compare (`thinktune eval --compare` over chosen runs) and Export (a run in each export format, with
its verification).

    thinktune ui --runs-dir runs --port 7860
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinktune.errors import UserError
from thinktune.ui import form, runs_view
from thinktune.ui.jobs import Jobs, command_line
from thinktune.ui.paths import confine, run_name_ok

TICK_SECONDS = 2.0
PATH_FIELDS = ("model.name_or_path", "data.train", "data.test", "data.validation", "data.dataset_dir")


@dataclass
class UIState:
    runs_dir: Path
    data_roots: list[Path] = field(default_factory=list)
    jobs: Jobs = None  # type: ignore[assignment]
    chat_models: dict[str, Any] = field(default_factory=dict)  # run name / "base:<model>" → (model, tok, vision)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.runs_dir = self.runs_dir.resolve()
        self.data_roots = [r.resolve() for r in self.data_roots]
        self.jobs = self.jobs or Jobs(self.runs_dir)

    @property
    def roots(self) -> list[Path]:
        return [self.runs_dir, *self.data_roots]

    def run_path(self, name: str) -> Path:
        return confine(run_name_ok(name), [self.runs_dir])

    def run_names(self) -> list[str]:
        return [p.name for p in runs_view.run_dirs(self.runs_dir)]

    def table(self) -> list[list[str]]:
        return [runs_view.run_row(p, self.jobs.alive(p.name)) for p in runs_view.run_dirs(self.runs_dir)]


DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
PICKED = ("model.name_or_path", "data.train", "data.test", "data.validation")
SCAN_DEPTH, SCAN_MAX = 3, 200


def _scan(root: Path, depth: int = SCAN_DEPTH):
    """Files and folders under `root`, breadth first, `depth` levels down, hidden ones left out."""
    level = [root]
    for _ in range(depth):
        nxt = []
        for d in level:
            try:
                children = sorted(d.iterdir())
            except OSError:
                continue
            for c in children:
                if not c.name.startswith("."):
                    yield c
                    if c.is_dir():
                        nxt.append(c)
        level = nxt


def picker_choices(state: UIState) -> dict[str, list[str]]:
    """What the model and data pickers offer: the bundled model and datasets, model folders (a config.json) and
    GGUF files under the data roots, runs' merged exports, and data files under the data roots. A picker also takes
    any typed value (a Hub id, another path), checked on Launch like every field."""
    from thinktune.data.reading import bundled_names
    from thinktune.models.loading import BUNDLED

    models, data = list(BUNDLED), []
    for root in state.data_roots:
        for p in _scan(root):
            if (p.is_dir() and (p / "config.json").is_file()) or p.suffix == ".gguf":
                models.append(str(p))
            elif p.is_file() and p.suffix in DATA_SUFFIXES and p.name != "config.json":
                data.append(str(p))
    models += [str(p) for p in sorted(state.runs_dir.glob("*/export/merged")) if (p / "config.json").is_file()]
    lists = [json.dumps([d]) for d in [*bundled_names(), *data[:SCAN_MAX]]]
    return {"model.name_or_path": models[:SCAN_MAX], **dict.fromkeys(PICKED[1:], lists)}


def local_paths_in(cfg) -> list[str]:
    """The settings of PATH_FIELDS that name local files or folders (not bundled:, hf: or Hub ids)."""
    out = []
    for key in PATH_FIELDS:
        value = form.value_at(cfg, key)
        for v in value if isinstance(value, list) else [value]:
            v = v.get("path") if isinstance(v, dict) else v
            if not v or str(v).startswith(("bundled:", "hf:")):
                continue
            if Path(v).is_absolute() or str(v).startswith((".", "~")) or Path(v).exists():
                out.append(str(v))
    return out


def prepare_launch(state: UIState, command: str, base_config: str, specs, shown: list[Any]):
    """(argv, run dir, config) for the form's values, or a UserError with the CLI's one-line words."""
    if command not in form.RECIPES:
        raise UserError(f"unknown command {command!r}: train, dpo or grpo")
    base = confine(base_config, state.roots) if base_config.strip() else None
    base_cfg = form.load_config(base)
    sets = form.overrides(base_cfg, specs, shown)
    cfg = form.check(base, sets, command)
    for p in local_paths_in(cfg):
        confine(p, state.roots, Path.cwd())
    run_dir = state.run_path(cfg.name)
    return command_line(command, base, sets, run_dir), run_dir, cfg


def curve_frames(run: Path | None) -> list[Any]:
    """One (step, value) frame per plotted metric of the run (empty frames without a run)."""
    import pandas as pd

    points = runs_view.curves(runs_view.read_metric_rows(run / runs_view.METRICS) if run else [])
    # typed even when empty: Gradio would take an object column for a category axis
    return [
        pd.DataFrame(points[k], columns=["step", k]).astype({"step": "int64", k: "float64"}) for k in runs_view.CURVES
    ]


def run_page(state: UIState, name: str | None) -> tuple[Any, ...]:
    """(headline markdown, 4 curve frames, console text, image paths) of run `name`."""
    if not name:
        return ("Pick a run.", *curve_frames(None), "", [])
    run = state.run_path(name)
    row = dict(zip(runs_view.COLUMNS, runs_view.run_row(run, state.jobs.alive(name)), strict=True))
    head = " · ".join(f"**{k}** {v}" for k, v in row.items() if k != "run")
    return (
        f"### {name}\n{head}\n\n{runs_view.checkpoints_and_guards(run)}",
        *curve_frames(run),
        runs_view.tail(run / runs_view.CONSOLE),
        [str(p) for p in runs_view.images(run)],
    )


def split_report(markdown: str) -> str:
    """report.md without its image lines (the charts show in the gallery beside it)."""
    return re.sub(r"^!\[[^\]]*\]\([^)]*\)\s*$", "", markdown, flags=re.M)


def build_app(state: UIState):
    import gradio as gr

    specs = form.form_fields()
    with gr.Blocks(title="thinktune") as demo:
        gr.Markdown(f"# thinktune\nruns directory: `{state.runs_dir}`")
        timer = gr.Timer(TICK_SECONDS)
        with gr.Tabs():
            with gr.Tab("Runs", id="runs"):
                table = gr.Dataframe(
                    value=state.table(), headers=runs_view.COLUMNS, interactive=False, label="runs", wrap=True
                )
                with gr.Row():
                    pick = gr.Dropdown(choices=state.run_names(), label="run", allow_custom_value=True, scale=3)
                    stop = gr.Button("Stop run", variant="stop", scale=1, elem_id="stop")
                    resume = gr.Button("Resume run", scale=1, elem_id="resume")
                stop_msg = gr.Markdown(elem_id="stop-msg")
                headline = gr.Markdown("Pick a run.", elem_id="run-headline")
                with gr.Row():
                    plots = [
                        gr.LinePlot(x="step", y=k, title=k, height=220, elem_id=f"curve-{k}")
                        for k in runs_view.CURVES[:2]
                    ]
                with gr.Row():
                    plots += [
                        gr.LinePlot(x="step", y=k, title=k, height=220, elem_id=f"curve-{k}")
                        for k in runs_view.CURVES[2:]
                    ]
                console = gr.Textbox(label="console (runs launched here)", lines=12, max_lines=24, elem_id="console")
                gallery = gr.Gallery(label="plots the run wrote", columns=4, height="auto")
                page = [headline, *plots, console, gallery]

                def refresh(name):
                    names = state.run_names()
                    return [state.table(), gr.update(choices=names), *run_page(state, name)]

                timer.tick(refresh, inputs=pick, outputs=[table, pick, *page], show_progress="hidden")
                pick.change(lambda n: run_page(state, n), inputs=pick, outputs=page)
                stop.click(lambda n: state.jobs.stop(n) if n else "Pick a run.", inputs=pick, outputs=stop_msg)

                def do_resume(name):
                    if not name:
                        return "Pick a run."
                    try:
                        state.jobs.resume(state.run_path(name))
                    except UserError as e:
                        return f"**error:** {e}"
                    return f"resumed `{name}` from its latest checkpoint"

                resume.click(do_resume, inputs=pick, outputs=stop_msg)

            with gr.Tab("Launch", id="launch"):
                with gr.Row():
                    command = gr.Radio(list(form.RECIPES), value="train", label="command")
                    base_config = gr.Textbox(
                        label="base config (YAML under the runs dir or a data root; empty: the quickstart)", scale=3
                    )
                    load = gr.Button("Load", scale=1)
                base_values = form.form_values(form.load_config(), specs)
                picks = picker_choices(state)
                widgets = []
                for section in form.sections_in(specs):
                    with gr.Accordion(section or "run", open=section in ("", "model", "train")):
                        for spec, value in zip(specs, base_values, strict=True):
                            if form.section_of(spec) != section:
                                continue
                            label, info = form.field_label(spec), spec.description
                            eid = "f-" + spec.key.replace(".", "-")
                            if spec.key in picks:  # a picker that also takes a typed value
                                choices = list(dict.fromkeys([*([value] if value else []), *picks[spec.key]]))
                                w = gr.Dropdown(
                                    choices=choices, value=value, allow_custom_value=True, label=label, info=info,
                                    elem_id=eid,
                                )  # fmt: skip
                            elif spec.kind == "bool":
                                w = gr.Checkbox(value=value, label=label, info=info, elem_id=eid)
                            elif spec.kind == "choice":
                                choices = [*([""] if spec.nullable else []), *spec.choices]
                                w = gr.Dropdown(choices=choices, value=value, label=label, info=info, elem_id=eid)
                            else:
                                w = gr.Textbox(value=value, label=label, info=info, elem_id=eid, max_lines=4)
                            widgets.append(w)
                launch = gr.Button("Launch", variant="primary", elem_id="launch")
                launch_msg = gr.Markdown(elem_id="launch-msg")

                def do_load(path):
                    try:
                        p = confine(path, state.roots) if path.strip() else None
                        return [*form.form_values(form.load_config(p), specs), ""]
                    except UserError as e:
                        return [*[gr.update() for _ in specs], f"**error:** {e}"]

                load.click(do_load, inputs=base_config, outputs=[*widgets, launch_msg])

                def do_launch(cmd, path, *shown):
                    try:
                        argv, run_dir, _ = prepare_launch(state, cmd, path, specs, list(shown))
                        state.jobs.launch(argv, run_dir)
                    except UserError as e:
                        return f"**error:** {e}", gr.update()
                    return f"launched `{run_dir.name}`: `thinktune {' '.join(argv[3:])}`", gr.update(
                        choices=state.run_names(), value=run_dir.name
                    )

                launch.click(do_launch, inputs=[command, base_config, *widgets], outputs=[launch_msg, pick])

            with gr.Tab("Chat", id="chat"):
                with gr.Row():
                    chat_run = gr.Dropdown(choices=state.run_names(), label="run (its model and what it trained)")
                    thinking = gr.Checkbox(value=True, label="thinking")
                    sample = gr.Checkbox(value=False, label="sample")
                    temperature = gr.Slider(0.05, 2.0, value=0.7, label="temperature")
                    max_new = gr.Slider(8, 2048, value=256, step=8, label="max new tokens")
                with gr.Row():
                    base_chat = gr.Chatbot(label="base model", elem_id="chat-base")
                    tuned_chat = gr.Chatbot(label="with the run's training", elem_id="chat-tuned")
                question = gr.Textbox(label="message", elem_id="chat-input")
                send = gr.Button("Send", elem_id="chat-send")
                chat_msg = gr.Markdown()

                def do_chat(name, text, think, do_sample, temp, n_new, hist_base, hist_tuned):
                    from thinktune.ui.chat import ask_both

                    try:
                        hb, ht = ask_both(state, name, text, think, do_sample, temp, int(n_new), hist_base, hist_tuned)
                    except UserError as e:
                        return hist_base, hist_tuned, f"**error:** {e}", text
                    return hb, ht, "", ""

                send.click(
                    do_chat,
                    inputs=[chat_run, question, thinking, sample, temperature, max_new, base_chat, tuned_chat],
                    outputs=[base_chat, tuned_chat, chat_msg, question],
                )
                chat_run.focus(lambda: gr.update(choices=state.run_names()), outputs=chat_run)

            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    cmp_runs = gr.Dropdown(
                        choices=state.run_names(), multiselect=True, label="runs", elem_id="compare-runs"
                    )
                    with_base = gr.Checkbox(value=True, label="include the base model")
                    go = gr.Button("Compare", variant="primary", elem_id="compare-go")
                report = gr.Markdown(elem_id="compare-report")
                charts = gr.Gallery(label="charts", columns=2, height="auto", elem_id="compare-charts")

                def do_compare(names, base):
                    from thinktune.ui.chat import compare_runs

                    try:
                        md, imgs = compare_runs(state, names or [], base)
                    except UserError as e:
                        return f"**error:** {e}", []
                    return split_report(md), [str(p) for p in imgs]

                go.click(do_compare, inputs=[cmp_runs, with_base], outputs=[report, charts])
                cmp_runs.focus(lambda: gr.update(choices=state.run_names()), outputs=cmp_runs)

            with gr.Tab("Export", id="export"):
                from thinktune.ui.export import FORMATS, export_run

                with gr.Row():
                    exp_run = gr.Dropdown(choices=state.run_names(), label="run", elem_id="export-run")
                    exp_format = gr.Radio(choices=list(FORMATS), value="merged", label="format")
                    exp_go = gr.Button("Export", variant="primary", elem_id="export-go")
                exp_result = gr.Markdown(elem_id="export-result")

                def do_export(name, fmt):
                    if not name:
                        return "Pick a run."
                    try:
                        return export_run(state.run_path(name), fmt)[0]
                    except UserError as e:
                        return f"**error:** {e}"

                exp_go.click(do_export, inputs=[exp_run, exp_format], outputs=exp_result)
                exp_run.focus(lambda: gr.update(choices=state.run_names()), outputs=exp_run)
    return demo


def check_host(host: str, auth: str | None) -> tuple[str, str] | None:
    """Gradio's auth pair; a non-loopback host without --auth is refused."""
    pair = None
    if auth is not None:
        user, sep, password = auth.partition(":")
        if not sep or not user or not password:
            raise UserError("--auth: give USER:PASSWORD")
        pair = (user, password)
    if host not in ("127.0.0.1", "localhost", "::1") and pair is None:
        raise UserError(f"--host {host} exposes the UI beyond this machine: add --auth USER:PASSWORD")
    return pair


def serve_ui(state: UIState, host: str, port: int, auth: tuple[str, str] | None, block: bool = True):
    demo = build_app(state)
    demo.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        allowed_paths=[str(state.runs_dir)],
        prevent_thread_lock=not block,
        show_error=True,
        quiet=True,
    )
    return demo
