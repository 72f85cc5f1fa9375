"""The OpenAI-compatible HTTP API over the batching engine.

POST /v1/chat/completions   chat; R1 thinking → `reasoning_content`, the answer → `content` and `tool_calls`; SSE
                            with `stream: true`; images as base64 data: URLs in `image_url` parts (images.py), for a
                            vision-language model; with a rag index, passages for the last user message go into
                            the prompt and come back as a top-level `sources` list (in the first chunk when
                            streaming)
POST /v1/completions        raw text completion
GET  /v1/models             the base model and every adapter, by the name a request's `model` uses
GET  /health                200 while serving, 503 while shutting down (readiness / liveness probes)
GET  /metrics               Prometheus text (see metrics.py)

Every error is OpenAI-shaped JSON `{"error": {"message", "type", "code", "param"}}`; a client never sees a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from thinktune.config import ServeConfig
from thinktune.data.images import IMAGE_TOKEN
from thinktune.data.record_error import RecordError
from thinktune.data.render import render_prompt
from thinktune.rag.prompt import with_passages
from thinktune.rag.retrieval import Retrieval
from thinktune.serve.adapters import ServedModel
from thinktune.serve.engine import (
    Engine,
    EngineClosed,
    Event,
    Failed,
    Finished,
    GenerationRequest,
    QueueFull,
    TextDelta,
)
from thinktune.serve.images import request_images
from thinktune.serve.metrics import CONTENT_TYPE, ServerMetrics
from thinktune.serve.middleware import ApiKeyAuth, BodyLimit, Draining, Lifecycle, RequestMetrics
from thinktune.serve.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    GenerationFields,
    canonical_messages,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    error_body,
    new_id,
    sse,
    usage_chunk,
)
from thinktune.serve.reply import ReplyStream, whole_reply
from thinktune.serve.sampling import SamplingParams
from thinktune.serve.thinking import prompt_opens_thinking

log = logging.getLogger("thinktune.serve")

# apply_chat_template's own arguments: a request's chat_template_kwargs may not set them.
RESERVED_TEMPLATE_KWARGS = {
    "conversation", "tools", "documents", "chat_template", "add_generation_prompt", "continue_final_message",
    "tokenize", "padding", "truncation", "max_length", "return_tensors", "return_dict", "return_assistant_tokens_mask",
    "tokenizer_kwargs",
}  # fmt: skip


class RequestEvents:
    """The engine's events for one request, handed from the worker thread into the handler's event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    async def next(self, deadline: float) -> Event:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return await asyncio.wait_for(self.queue.get(), left)


class Api:
    """The request handlers: turn a request into engine work and the engine's events into OpenAI responses."""

    def __init__(
        self,
        served: ServedModel,
        cfg: ServeConfig,
        engine: Engine,
        metrics: ServerMetrics,
        retrieval: Retrieval | None = None,
    ):
        self.served, self.cfg, self.engine, self.metrics = served, cfg, engine, metrics
        self.retrieval = retrieval
        self.tokenizer = served.tokenizer  # used on the event loop only; the engine has its own copy

    # -- request → engine work -------------------------------------------------------------------------------------

    def adapter_for(self, model: str | None) -> str | None:
        try:
            return self.served.adapter_for(model)
        except KeyError:
            served = ", ".join(self.served.names)
            raise ApiError(
                404, f"model '{model}' not found; this server has: {served}", code="model_not_found", param="model"
            ) from None

    async def retrieve(self, body: ChatCompletionRequest) -> list[dict[str, Any]] | None:
        """With a rag index: the passages for the last user message (searched off the event loop), else None."""
        if self.retrieval is None:
            return None
        messages = canonical_messages(body.messages)
        _, hits = await asyncio.to_thread(self.retrieval.augment, messages)
        return hits

    def render_chat(self, body: ChatCompletionRequest, images: list[Any], passages: list[Any] | None = None) -> str:
        reserved = RESERVED_TEMPLATE_KWARGS & set(body.chat_template_kwargs)
        if reserved:
            raise ApiError(400, f"chat_template_kwargs may not set {sorted(reserved)}", param="chat_template_kwargs")
        messages = canonical_messages(body.messages)
        if passages:  # as training wrote them (rag/prompt.py)
            messages = with_passages(messages, [h.chunk for h in passages])
        if images:  # each <image> placeholder → the model's image text; without images `<image>` stays plain text
            messages = self.served.vision.messages(messages)
        extra = {k: v for k, v in body.chat_template_kwargs.items() if k != "enable_thinking"}
        try:
            return render_prompt(
                self.tokenizer,
                messages,
                self.served.system_prompt,
                tools=body.template_tools,
                enable_thinking=body.thinking_or(self.served.thinking),
                template_kwargs=extra,
            )
        except RecordError as e:
            raise ApiError(400, str(e), param="messages") from None
        except Exception as e:  # the template's own checks (role order, ...) raise many types
            raise ApiError(400, f"the chat template rejected these messages: {e}", param="messages") from None

    async def encode(self, prompt: str, images: list[Any]) -> tuple[list[int], dict[str, torch.Tensor]]:
        """The prompt's token ids, each image token repeated per merged patch of its image, and the images' pixels.
        With a vision-language model the image texts and images must pair up: a stray image token would fail the
        whole batch it runs in."""
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        vision = self.served.vision
        if vision is None:
            return ids, {}
        # the image processor runs off the event loop; the tokenizer stays on it (a fast tokenizer is not thread-safe)
        pixels = await asyncio.to_thread(vision.pixels, images) if images else {}
        counts = [int(g.prod()) // vision.merge**2 for g in pixels.get("image_grid_thw", [])]
        try:
            expanded, _, used = vision.expand(ids, counts)
            if used != len(images):
                raise RecordError(f"the prompt holds {used} image(s) of the request's {len(images)}")
        except RecordError as e:
            raise ApiError(
                400, f"{e}: {IMAGE_TOKEN} or the model's image token in a message's text is taken for an image",
                param="messages",
            ) from None  # fmt: skip
        return expanded, pixels

    def sampling(self, body: GenerationFields, prompt_tokens: int) -> SamplingParams:
        limit, room = self.cfg.max_tokens_limit, self.served.max_context - prompt_tokens
        asked = body.requested_max_tokens
        if asked is not None and asked > limit:
            raise ApiError(400, f"max_tokens={asked} is above this server's limit of {limit}", param="max_tokens")
        if room <= 0 or (asked is not None and asked > room):
            raise ApiError(
                400,
                f"this model's context is {self.served.max_context} tokens; the prompt has {prompt_tokens}"
                + (f" and max_tokens asks for {asked} more" if asked else ""),
                code="context_length_exceeded",
                param="max_tokens" if asked else "messages",
            )
        return body.sampling(asked or min(limit, room))

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        adapter: str | None,
        pixels: dict[str, torch.Tensor] | None = None,
    ):
        events = RequestEvents()
        deadline = time.monotonic() + self.cfg.request_timeout
        request = GenerationRequest(prompt_ids, params, events.emit, adapter, deadline, pixels=pixels or {})
        try:
            self.engine.submit(request)
        except QueueFull:
            wait = self.engine.retry_after()
            raise ApiError(
                429,
                f"server busy: {self.engine.queue_depth} requests are waiting; retry in {wait} s",
                "rate_limit_error",
                "queue_full",
                headers={"Retry-After": str(wait)},
            ) from None
        except EngineClosed:
            raise ApiError(503, "server is shutting down", "service_unavailable", "shutting_down") from None
        return request, events

    # -- engine events → responses ---------------------------------------------------------------------------------

    async def next_event(self, request: GenerationRequest, events: RequestEvents, model: str) -> Event:
        try:
            event = await events.next(request.deadline)
        except TimeoutError:
            request.cancel()
            raise ApiError(
                504, f"no answer within request_timeout={self.cfg.request_timeout:g} s", "timeout_error", "timeout"
            ) from None
        if isinstance(event, Failed):
            raise ApiError(500, event.message, "server_error")
        if isinstance(event, Finished):
            self.metrics.observe_tokens(model, event.prompt_tokens, event.completion_tokens)
        return event

    async def collect(self, request: GenerationRequest, events: RequestEvents, model: str) -> tuple[str, Finished]:
        parts = []
        try:
            while not isinstance(event := await self.next_event(request, events, model), Finished):
                parts.append(event.text)
            return "".join(parts), event
        finally:
            request.cancel()  # after a timeout or a vanished client the row stops at the next step

    async def stream(self, request: GenerationRequest, events: RequestEvents, model: str, chunks) -> StreamingResponse:
        """SSE response; waits for the first event first, so a timeout before any token is still a plain 504."""
        try:
            first = await self.next_event(request, events, model)
        except BaseException:
            request.cancel()
            raise

        async def body() -> AsyncIterator[str]:
            event = first
            try:
                async for chunk in chunks(event, lambda: self.next_event(request, events, model)):
                    yield sse(chunk)
            except ApiError as e:  # after the headers went out, an error can only be an event
                yield sse(e.body())
            finally:
                request.cancel()
            yield sse("[DONE]")

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    # -- endpoints -------------------------------------------------------------------------------------------------

    async def chat(self, body: ChatCompletionRequest) -> Any:
        model = body.model or self.served.base_name
        adapter = self.adapter_for(body.model)
        if self.served.vision is None and any(m.image_urls() for m in body.messages):
            raise ApiError(400, f"{model} is a text-only model: it takes no images", param="messages")
        images = request_images(body.messages)
        hits = await self.retrieve(body)
        prompt = self.render_chat(body, images, hits)
        prompt_ids, pixels = await self.encode(prompt, images)
        params = self.sampling(body, len(prompt_ids))
        in_thinking = prompt_opens_thinking(prompt)
        request, events = self.submit(prompt_ids, params, adapter, pixels)
        id = new_id("chatcmpl")
        tools = bool(body.template_tools)
        if not body.stream:
            text, finished = await self.collect(request, events, model)
            thinking = body.thinking_or(self.served.thinking)
            message, reason = whole_reply(text, finished.reason, in_thinking, thinking, tools)
            return with_sources(chat_response(id, model, message, reason, finished), hits)

        async def chunks(event: Event, next_event) -> AsyncIterator[dict[str, Any]]:
            reply = ReplyStream(in_thinking, body.thinking_or(self.served.thinking), tools)
            yield with_sources(chat_chunk(id, model, {"role": "assistant", "content": ""}), hits)
            while isinstance(event, TextDelta):
                for delta in reply.feed(event.text):
                    yield chat_chunk(id, model, delta)
                event = await next_event()
            deltas, reason = reply.finish(event.reason)
            for delta in deltas:
                yield chat_chunk(id, model, delta)
            yield chat_chunk(id, model, {}, reason)
            if body.include_usage:
                yield usage_chunk(id, model, "chat.completion.chunk", event)

        return await self.stream(request, events, model, chunks)

    async def complete(self, body: CompletionRequest) -> Any:
        model = body.model or self.served.base_name
        adapter = self.adapter_for(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        encoded = [self.tokenizer(p)["input_ids"] for p in prompts]
        vision = self.served.vision
        if vision is not None and any(vision.image_token_id in ids for ids in encoded):
            raise ApiError(
                400, "prompt: image tokens need images; send images to /v1/chat/completions", param="prompt"
            )  # without its pixels an image token would fail the whole batch it runs in
        params = [self.sampling(body, len(ids)) for ids in encoded]
        submitted = []
        try:
            for ids, p in zip(encoded, params, strict=True):
                submitted.append(self.submit(ids, p, adapter))
        except ApiError:
            for request, _ in submitted:
                request.cancel()
            raise
        id = new_id("cmpl")
        if not body.stream:
            results = await asyncio.gather(*(self.collect(r, e, model) for r, e in submitted))
            return completion_response(id, model, [t for t, _ in results], [f for _, f in results])

        async def chunks(event: Event, next_event) -> AsyncIterator[dict[str, Any]]:
            while isinstance(event, TextDelta):
                yield completion_chunk(id, model, event.text)
                event = await next_event()
            yield completion_chunk(id, model, "", event.reason)
            if body.include_usage:
                yield usage_chunk(id, model, "text_completion", event)

        [(request, events)] = submitted
        return await self.stream(request, events, model, chunks)

    def models(self) -> dict[str, Any]:
        created = int(time.time())
        data = [{"id": self.served.base_name, "object": "model", "created": created, "owned_by": "thinktune"}]
        for name, path in self.served.adapters.items():
            data.append(
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "thinktune",
                    "parent": self.served.base_name,
                    "root": str(path),
                }
            )
        return {"object": "list", "data": data}


def with_sources(body: dict[str, Any], hits: list[Any] | None) -> dict[str, Any]:
    """A chat completion (or its first chunk) with the passages its prompt held: a top-level `sources` list of
    {id, doc, score, text}, which the openai client keeps in `model_extra`."""
    if hits is not None:
        body["sources"] = [h.source() for h in hits]
    return body


def create_app(
    served: ServedModel,
    cfg: ServeConfig,
    api_key: str | None = None,
    lifecycle: Lifecycle | None = None,
    retrieval: Retrieval | None = None,
    engine: Engine | None = None,
) -> FastAPI:
    """The ASGI app; its lifespan starts the engine and, on shutdown, drains it. With `retrieval` (a rag index) each
    chat request gets the passages for its last user message and returns them as `sources`. `engine`: another
    backend's engine (llamacpp_backend.py) instead of the transformers one."""
    lifecycle = lifecycle or Lifecycle()
    metrics = ServerMetrics(lambda: engine.queue_depth, lambda: engine.running, cfg.max_queue)
    if engine is None:
        engine = Engine(served, cfg.max_batch_size, cfg.max_queue, on_draft=metrics.observe_draft)
    engine.on_batch = metrics.batch_size.observe
    api = Api(served, cfg, engine, metrics, retrieval)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        lifecycle.draining = True
        await asyncio.to_thread(engine.stop, cfg.request_timeout)

    app = FastAPI(title="thinktune", summary="OpenAI-compatible server for thinktune models", lifespan=lifespan)
    app.state.engine, app.state.lifecycle, app.state.served = engine, lifecycle, served

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        if err.get("type") == "json_invalid":
            message, param = f"invalid JSON body: {err.get('ctx', {}).get('error', err.get('msg'))}", None
        elif tuple(err.get("loc", ())) == ("body",) and err.get("type") == "model_attributes_type":
            message, param = "the body must be a JSON object, sent with Content-Type: application/json", None
        else:
            param = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or None
            msg = str(err.get("msg", "invalid request")).removeprefix("Value error, ")
            message = f"{param}: {msg}" if param else msg
        return JSONResponse(error_body(message, "invalid_request_error", None, param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        body = error_body(str(e.detail), "invalid_request_error", "not_found" if e.status_code == 404 else None)
        return JSONResponse(body, status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        return await api.chat(body)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        return await api.complete(body)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return api.models()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": served.names, "queue_depth": engine.queue_depth, "running": engine.running}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # Added innermost first: a request meets RequestMetrics, then Draining, ApiKeyAuth, BodyLimit.
    app.add_middleware(BodyLimit, max_bytes=cfg.max_request_bytes)
    app.add_middleware(ApiKeyAuth, api_key=api_key)
    app.add_middleware(Draining, lifecycle=lifecycle)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
