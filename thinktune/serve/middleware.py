"""Plain ASGI middleware around the API, outermost first: metrics → draining (503) → API key (401) → body size (413).

Plain ASGI rather than Starlette's BaseHTTPMiddleware: they pass streamed responses through untouched, and each check
answers before the body is read or the model is touched.
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass

from thinktune.serve.metrics import ServerMetrics
from thinktune.serve.protocol import ApiError

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")


@dataclass
class Lifecycle:
    """Shared between the app and the server: set on SIGTERM / shutdown, then new requests get 503."""

    draining: bool = False


async def send_error(send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/metrics":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            self.metrics.observe_request(endpoint, status, time.perf_counter() - start)


class Draining:
    def __init__(self, app, lifecycle: Lifecycle):
        self.app, self.lifecycle = app, lifecycle

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.lifecycle.draining and scope["path"] != "/metrics":
            error = ApiError(503, "server is shutting down", "service_unavailable", "shutting_down")
            error.headers["connection"] = "close"
            return await send_error(send, error)
        return await self.app(scope, receive, send)


class ApiKeyAuth:
    """`Authorization: Bearer KEY` on /v1 routes; /health and /metrics stay open for probes and scrapers."""

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.key and scope["path"].startswith("/v1"):
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                error = ApiError(401, "invalid or missing API key", "authentication_error", "invalid_api_key")
                error.headers["www-authenticate"] = "Bearer"
                return await send_error(send, error)
        return await self.app(scope, receive, send)


class BodyLimit:
    """Refuse bodies over `max_bytes` (413): by Content-Length up front, else while reading a chunked body."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_large = ApiError(
            413, f"request body is larger than {self.max_bytes} bytes", "invalid_request_error", "request_too_large"
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await send_error(send, too_large)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await send_error(send, too_large)
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
