"""`thinktune serve` as a real process: serves a run directory, and SIGTERM lets the running request finish."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_run_dir_then_sigterm_drains(run_dir, tiny_base, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "thinktune", "serve", "--run-dir", str(run_dir), "--port", str(port)]
        + ["--threads", "1", "--log-level", "warning"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "THINKTUNE_API_KEY": "k"},
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        auth = {"Authorization": "Bearer k"}
        models = httpx.get(url + "/v1/models", headers=auth).json()
        assert [m["id"] for m in models["data"]] == [str(tiny_base), "tiny-run"]  # the run's adapter, by run name

        result = {}
        body = {"model": "tiny-run", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 150}
        body["ignore_eos"] = True

        def post() -> None:
            result["r"] = httpx.post(url + "/v1/chat/completions", json=body, headers=auth, timeout=60)

        t = threading.Thread(target=post)
        t.start()
        deadline = time.monotonic() + 30
        while httpx.get(url + "/health").json()["running"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert result["r"].status_code == 200, result["r"].text
        assert json.loads(result["r"].text)["usage"]["completion_tokens"] == 150  # finished, not cut off
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
