"""A local OpenAI-compatible chat endpoint for the tests of the teacher plumbing (`distill traces`, back-translation,
`data synth --teacher`): a subclass says what the assistant answers to a request; `serving(Handler)` runs it on a
free port of 127.0.0.1 and yields its base URL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any


class ChatEndpoint(BaseHTTPRequestHandler):
    """GET /v1/models lists `model_id`; POST /v1/chat/completions answers with `answer(request)`, one choice."""

    model_id = "teacher"

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """The assistant message for a chat completion request."""
        raise NotImplementedError

    def log_message(self, *args):
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        model = {"id": self.model_id, "object": "model", "created": 0, "owned_by": "x"}
        self._send({"object": "list", "data": [model]})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        choice = {"index": 0, "message": self.answer(req), "finish_reason": "stop"}
        self._send({"id": "x", "object": "chat.completion", "created": 0, "model": req["model"], "choices": [choice]})


@contextmanager
def serving(handler: type[ChatEndpoint]) -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
