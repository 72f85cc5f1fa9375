"""`thinktune ui` in a real headless Chromium (Playwright driving Debian's /usr/bin/chromium): launch a tiny-model
training run from the form, watch its loss curve grow on the run page, then chat with the run. Screenshots go to
the test's tmp dir (and docs/img/ui-*.png when THINKTUNE_UI_SCREENSHOTS=docs)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make install adds Debian's chromium)"),
]
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (the test extra)")
pytest.importorskip("gradio", reason="gradio not installed (the ui / test extra)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ui_server(tiny_model_dirs, tmp_path):
    port = free_port()
    runs = tmp_path / "runs"
    args = [sys.executable, "-m", "thinktune", "ui", "--runs-dir", str(runs), "--port", str(port)]
    args += ["--data-root", str(tiny_model_dirs["qwen3"].parent)]
    log = open(tmp_path / "ui.log", "w")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, (tmp_path / "ui.log").read_text()[-2000:]
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}", runs
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def x_axis_points(page) -> int:
    """How many steps the loss chart's x axis spans (vega's aria label: 'values from 1 to N')."""
    html = page.locator("#curve-loss").inner_html()
    m = re.search(r"X-axis titled 'step' for a linear scale with values from \d+ to (\d+)", html)
    return int(m.group(1)) if m else 0


def test_launch_watch_and_chat_in_a_browser(ui_server, tiny_model_dirs, tmp_path):
    url, runs = ui_server
    shots = [tmp_path]
    if os.environ.get("THINKTUNE_UI_SCREENSHOTS") == "docs":
        shots.append(ROOT / "docs" / "img")

    def shoot(page, name, full=False):
        for d in shots:
            page.screenshot(path=str(d / f"ui-{name}.png"), full_page=full)

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_role("tab", name="Launch").click()

        def fill(key: str, value: str) -> None:
            page.locator(f"#f-{key.replace('.', '-')} textarea").fill(value)

        # a bad value first: the CLI's one-line error shows under the button, nothing is launched
        fill("train.learning_rate", "-1")
        page.locator("#launch").click()
        page.wait_for_function("document.querySelector('#launch-msg').innerText.includes('error')", timeout=30000)
        msg = page.locator("#launch-msg").inner_text()
        assert "--set train.learning_rate=-1: train.learning_rate: Input should be greater than 0" in msg
        assert not runs.exists() or not any(runs.iterdir())

        fill("train.learning_rate", "0.001")
        fill("name", "ui-tiny")
        fill("model.name_or_path", str(tiny_model_dirs["qwen3"]))
        page.get_by_role("button", name="data").click()
        fill("data.max_train_samples", "16")
        fill("data.max_length", "512")
        fill("train.max_steps", "100000")  # stopped by time instead, so the page sees the run half-way
        fill("train.max_minutes", "0.4")
        fill("train.logging_steps", "5")
        fill("train.batch_size", "2")
        page.get_by_role("button", name="eval").click()
        fill("eval.max_samples", "3")
        fill("eval.max_new_tokens", "6")
        shoot(page, "launch")
        page.locator("#launch").click()
        page.wait_for_function("document.querySelector('#launch-msg').innerText.includes('launched')", timeout=30000)
        assert (runs / "ui-tiny" / "console.log").is_file()

        # the run page follows the run: the loss chart's x axis grows while it trains, then the status is finished
        page.get_by_role("tab", name="Runs").click()
        seen: list[int] = []
        deadline = time.time() + 300
        while time.time() < deadline:
            seen.append(x_axis_points(page))
            if (
                "finished" in page.locator("#run-headline").inner_text()
                or "failed" in page.locator("#run-headline").inner_text()
            ):
                break
            time.sleep(0.5)
        time.sleep(2 * 2.0 + 1)  # one more timer tick shows the last points
        headline = page.locator("#run-headline").inner_text()
        assert "finished" in headline, (runs / "ui-tiny" / "console.log").read_text()[-3000:]
        rows = [json.loads(line) for line in (runs / "ui-tiny" / "metrics.jsonl").read_text().splitlines()]
        last_step = max(r["step"] for r in rows if "loss" in r)
        # while it trained, the chart's axis followed the run; after it finishes the chart is not checked here: it
        # was seen redrawn empty once the run had ended (issue 23, open)
        grown = sorted({n for n in seen if n})
        assert len(grown) >= 3 and grown[0] < last_step, f"the curve did not grow step by step: {seen}"
        assert "thinktune train" in page.locator("#console textarea").input_value()
        shoot(page, "runs", full=True)

        # chat: the base and the tuned model answer side by side
        page.get_by_role("tab", name="Chat").click()
        page.get_by_label("run (its model and what it trained)").click()
        page.get_by_role("option", name="ui-tiny").click()
        page.locator("#chat-input textarea").fill("What is 2 + 2?")
        page.locator("#chat-send").click()
        for side in ("#chat-base", "#chat-tuned"):
            page.wait_for_function(f"document.querySelectorAll('{side} .message').length >= 2", timeout=120000)
            assert "What is 2 + 2?" in page.locator(side).inner_text()
        shoot(page, "chat")
        browser.close()
