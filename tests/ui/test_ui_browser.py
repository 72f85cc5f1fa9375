"""`thinktune ui` in a real headless Chromium (Playwright driving Debian's /usr/bin/chromium): launch a tiny-model
training run from the form, watch its loss curve grow on the run page, stop it and resume it, then chat with the
run, compare it with its base model and export it. Screenshots go to the test's tmp dir (and docs/img/ui-*.png when
THINKTUNE_UI_SCREENSHOTS=docs)."""

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
    """How many steps the loss chart's x axis spans (vega's aria label: 'values from 0 to 1,100')."""
    html = page.locator("#curve-loss").inner_html()
    m = re.search(r"X-axis titled 'step' for a linear scale with values from [\d,]+ to ([\d,]+)", html)
    return int(m.group(1).replace(",", "")) if m else 0


def wait_text(page, selector: str, text: str, timeout_ms: int = 60000) -> None:
    page.wait_for_function(
        f"(document.querySelector({json.dumps(selector)})?.innerText || '').includes({json.dumps(text)})",
        timeout=timeout_ms,
    )


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
        # the model picker offers the model folders under the data root
        page.locator("#f-model-name_or_path input").click()
        page.get_by_role("option", name=str(tiny_model_dirs["qwen3"]), exact=True).click()
        page.get_by_role("button", name="data").click()
        fill("data.max_train_samples", "16")
        fill("data.max_length", "512")
        fill("train.max_steps", "100000")  # stopped by time instead, so the page sees the run half-way
        fill("train.max_minutes", "0.75")
        fill("train.logging_steps", "5")
        fill("train.save_steps", "40")
        fill("train.batch_size", "2")
        page.get_by_role("button", name="eval").click()
        fill("eval.max_samples", "3")
        fill("eval.max_new_tokens", "6")
        page.evaluate("window.scrollTo(0, 0)")
        shoot(page, "launch")
        page.locator("#launch").click()
        page.wait_for_function("document.querySelector('#launch-msg').innerText.includes('launched')", timeout=30000)
        assert (runs / "ui-tiny" / "console.log").is_file()

        # the run page follows the run: the loss chart's x axis grows while it trains; Stop once a checkpoint exists
        page.get_by_role("tab", name="Runs").click()
        run_dir = runs / "ui-tiny"
        seen: list[int] = []
        deadline = time.time() + 300
        while time.time() < deadline:
            seen.append(x_axis_points(page))
            if len({n for n in seen if n}) >= 3 and list(run_dir.glob("checkpoints/step-*/position.json")):
                break
            headline = page.locator("#run-headline").inner_text()
            assert "failed" not in headline and "finished" not in headline, (run_dir / "console.log").read_text()
            time.sleep(0.5)
        grown = sorted({n for n in seen if n})
        assert len(grown) >= 3, f"the curve did not grow step by step: {seen}"
        page.locator("#stop").click()
        wait_text(page, "#stop-msg", "ui-tiny: stopped")
        wait_text(page, "#run-headline", "stopped")
        stopped_at = max(json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines())
        shoot(page, "stopped")

        # Resume: the same command with --resume auto, from the latest checkpoint, until the time budget ends it
        page.locator("#resume").click()
        wait_text(page, "#stop-msg", "resumed ui-tiny")
        wait_text(page, "#run-headline", "finished", timeout_ms=300000)
        console_text = page.locator("#console textarea").input_value()
        assert "--resume auto" in console_text and "resumed from" in console_text, console_text[-3000:]
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        last_step = max(r["step"] for r in rows if "loss" in r)
        assert last_step > stopped_at
        time.sleep(2 * 2.0 + 1)  # one more timer tick shows the last points
        # vega's "nice" scale ends the axis at the next tick at or above the last point (1,095 → 1,100)
        assert last_step <= x_axis_points(page) < 1.5 * last_step, (last_step, x_axis_points(page))
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

        # compare: the run against its base model on the run's test set; the report and its charts show
        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-runs input").click()
        page.get_by_role("option", name="ui-tiny").click()
        page.locator("#compare-go").click()
        wait_text(page, "#compare-report", "ui-tiny", timeout_ms=180000)
        assert (runs / "compare-ui-tiny" / "report.md").is_file()
        page.wait_for_function("document.querySelectorAll('#compare-charts img').length >= 1", timeout=30000)
        shoot(page, "compare", full=True)

        # export: merged weights, with the verification figures of `thinktune export`
        page.get_by_role("tab", name="Export").click()
        page.locator("#export-run input").click()
        page.get_by_role("option", name="ui-tiny").click()
        page.locator("#export-go").click()
        wait_text(page, "#export-result", "verification", timeout_ms=180000)
        record = json.loads((run_dir / "export" / "merged" / "verify.json").read_text())
        assert record["max_abs_logit_diff"] < 1e-3
        assert "max abs logit diff" in page.locator("#export-result").inner_text()
        shoot(page, "export")
        browser.close()
