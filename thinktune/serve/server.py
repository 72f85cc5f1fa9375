"""Run the API under uvicorn. SIGTERM drains: new requests get 503, running ones finish, then the process exits.

uvicorn already stops accepting connections and waits for open ones on SIGTERM; `DrainingServer` also flips the
app's `Lifecycle.draining` at the signal itself, so a request arriving on a kept-alive connection in that window gets
a 503 instead of joining the queue, and `/health` turns 503 so a load balancer stops sending traffic.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI

from thinktune.config import RunConfig
from thinktune.rag.retrieval import Retrieval
from thinktune.serve.adapters import ServedModel, load_served_model
from thinktune.serve.app import create_app
from thinktune.serve.middleware import Lifecycle

GRACE_S = 5.0  # beyond request_timeout, for the last responses to be written


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle):
        super().__init__(config)
        self.lifecycle = lifecycle

    def handle_exit(self, sig: int, frame) -> None:
        self.lifecycle.draining = True
        super().handle_exit(sig, frame)

    @property
    def port(self) -> int:
        return self.servers[0].sockets[0].getsockname()[1]


def api_key(cfg: RunConfig) -> str | None:
    return cfg.serve.api_key or os.environ.get("THINKTUNE_API_KEY") or None


def build_app(
    cfg: RunConfig,
    served_model_name: str | None = None,
    trained_tensors: Path | None = None,
    gguf: Path | None = None,
    threads: int | None = None,
) -> tuple[FastAPI, Lifecycle, ServedModel]:
    """Load the model (with a run's `trained_tensors` written in, if given) and adapters of `cfg`; wrap them in the
    API. With serve.backend=llamacpp, `gguf` is served by llama.cpp on `threads` CPU threads instead."""
    retrieval = Retrieval.open(cfg.data.rag) if cfg.data.rag else None  # a run trained on passages is served with them
    if cfg.serve.backend == "llamacpp":
        from thinktune.serve.llamacpp_backend import LlamaCppEngine, load_served_gguf

        served = load_served_gguf(cfg, gguf, served_model_name)
        engine = LlamaCppEngine(served, cfg.serve.max_batch_size, cfg.serve.max_queue, threads)
        lifecycle = Lifecycle()
        return create_app(served, cfg.serve, api_key(cfg), lifecycle, retrieval, engine), lifecycle, served
    served = load_served_model(
        cfg.model,
        cfg.serve.adapters,
        served_model_name,
        cfg.data.system_prompt,
        trained_tensors,
        cfg.serve.draft_model,
        cfg.serve.prompt_lookup,
    )
    served.thinking = cfg.data.thinking != "off"  # as the run was trained
    lifecycle = Lifecycle()
    return create_app(served, cfg.serve, api_key(cfg), lifecycle, retrieval), lifecycle, served


def make_server(
    app: FastAPI, lifecycle: Lifecycle, host: str, port: int, request_timeout: float, log_level: str = "info"
) -> DrainingServer:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=request_timeout + GRACE_S,
        lifespan="on",
    )
    return DrainingServer(config, lifecycle)


def serve(
    cfg: RunConfig,
    served_model_name: str | None = None,
    log_level: str = "info",
    num_threads: int | None = None,
    trained_tensors: Path | None = None,
    gguf: Path | None = None,
) -> None:
    """`thinktune serve`: blocks until SIGINT/SIGTERM, then drains."""
    if num_threads:
        torch.set_num_threads(num_threads)
    app, lifecycle, _ = build_app(cfg, served_model_name, trained_tensors, gguf, num_threads)
    make_server(app, lifecycle, cfg.serve.host, cfg.serve.port, cfg.serve.request_timeout, log_level).run()


class BackgroundServer:
    """The API on 127.0.0.1 and a free port in a background thread (tests, benchmarks).

    with BackgroundServer(app, lifecycle) as server:
        httpx.get(server.url + "/health")
    """

    def __init__(
        self,
        app: FastAPI,
        lifecycle: Lifecycle | None = None,
        request_timeout: float = 30.0,
        host: str = "127.0.0.1",
        log_level: str = "warning",
    ):
        self.lifecycle = lifecycle or getattr(app.state, "lifecycle", None) or Lifecycle()
        self.server = make_server(app, self.lifecycle, host, 0, request_timeout, log_level)
        self.host, self.port = host, 0
        self.thread = threading.Thread(target=self.server.run, name="thinktune-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server failed to start; see its log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not start within {timeout} s")
            time.sleep(0.02)
        self.port = self.server.port
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """As SIGTERM would: drain, then end."""
        if self.thread.is_alive():
            self.server.handle_exit(signal.SIGTERM, None)
            self.thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
