"""The OpenAI wire format: request schemas (validated by pydantic → 400), response and stream-chunk builders, errors.

Extensions that vLLM also accepts: `top_k`, `repetition_penalty`, `ignore_eos`, `chat_template_kwargs` (e.g.
`{"enable_thinking": false}`, as for Qwen3) and a top-level `enable_thinking`. Reasoning comes back as
`message.reasoning_content` / `delta.reasoning_content`, the field vLLM and DeepSeek use.

Tools: `tools`, `tool_choice` "auto" / "none", assistant messages with `tool_calls` (and `reasoning_content`), `tool`
messages; `canonical_messages` turns a request's messages into the data layer's canonical messages.

Images: `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` parts in a user message's content
become `<image>` placeholders at their place in the text (the data layer's convention, data/images.py); images.py
decodes them.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from thinktune.data.images import IMAGE_TOKEN
from thinktune.data.record_error import RecordError
from thinktune.data.tool_calls import parse_calls, parse_tools
from thinktune.serve.engine import Finished
from thinktune.serve.sampling import SamplingParams

MAX_STOP_STRINGS = 16


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "code", "param"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="ignore")  # `detail` is accepted and ignored: the model's processor sizes images
    url: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    reasoning_content: str | None = None
    tool_calls: list[Any] | None = None  # OpenAI's {"id", "type", "function": {"name", "arguments"}}; see parse_calls
    tool_call_id: str | None = None

    def text(self) -> str:
        """The content as text, an `<image>` placeholder where each image part is."""
        if isinstance(self.content, list):
            return "".join(p.text if isinstance(p, TextPart) else IMAGE_TOKEN for p in self.content)
        return self.content or ""

    def image_urls(self) -> list[str]:
        parts = self.content if isinstance(self.content, list) else []
        return [p.image_url.url for p in parts if isinstance(p, ImagePart)]


class StreamOptions(BaseModel):
    include_usage: bool = False


class GenerationFields(BaseModel):
    """Fields shared by /v1/chat/completions and /v1/completions. Unknown fields are ignored, as OpenAI's SDKs send
    some this server has no use for (`user`, `metadata`)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool | int | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @model_validator(mode="after")
    def _supported(self) -> GenerationFields:
        if self.n != 1:
            raise ValueError("n: only n=1 is supported")
        if self.presence_penalty or self.frequency_penalty:
            raise ValueError("presence_penalty/frequency_penalty are not supported; use repetition_penalty")
        if self.logprobs:
            raise ValueError("logprobs are not supported")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def sampling(self, max_tokens: int) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(self.top_k or 0, 0),
            repetition_penalty=self.repetition_penalty or 1.0,
            stop=tuple(self.stop or ()),
            seed=self.seed,
            ignore_eos=self.ignore_eos,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(GenerationFields):
    messages: list[Message] = Field(min_length=1)
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    enable_thinking: bool | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None

    @field_validator("tools")
    @classmethod
    def _tools(cls, v: list[Any] | None) -> list[dict[str, Any]] | None:
        try:
            return parse_tools(v, "") if v else None
        except RecordError as e:
            raise ValueError(str(e)) from None

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, v: Any) -> str | None:
        if v not in (None, "auto", "none"):
            raise ValueError('only "auto" and "none" are supported (no forced or required calls)')
        return v

    @property
    def template_tools(self) -> list[dict[str, Any]] | None:
        """The tools the model is shown and whose calls are parsed from its answer; none for tool_choice "none"."""
        return None if self.tool_choice == "none" else self.tools

    @property
    def thinking(self) -> bool:
        """Thinking on unless turned off, by `enable_thinking` or `chat_template_kwargs.enable_thinking`."""
        return self.thinking_or(True)

    def thinking_or(self, default: bool) -> bool:
        """The request's thinking switch, else the server's default (the run's `data.thinking`)."""
        if self.enable_thinking is not None:
            return self.enable_thinking
        return bool(self.chat_template_kwargs.get("enable_thinking", default))


def canonical_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """The request's messages as canonical messages (thinktune.data.formats): developer → system, tool calls as
    `{"name", "arguments": dict}`, assistant `reasoning_content` kept (the chat template decides whether history shows
    it). Raises ApiError (400) for calls whose arguments are not JSON and tool messages that answer no call."""
    out: list[dict[str, Any]] = []
    call_ids: set[str] | None = None  # ids of the calls the latest assistant message made (None: it made none)
    for i, m in enumerate(messages):
        where = f"messages[{i}]: "
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        msg["reasoning"] = m.reasoning_content if m.role == "assistant" and m.reasoning_content else None
        if m.tool_calls and m.role != "assistant":
            raise ApiError(400, f"{where}only assistant messages have tool_calls", param="messages")
        if m.role == "assistant":
            call_ids = None
            if m.tool_calls:
                try:
                    msg["tool_calls"] = parse_calls(m.tool_calls, f"{where}tool_calls: ")
                except RecordError as e:
                    raise ApiError(400, str(e), param="messages") from None
                call_ids = {c["id"] for c in m.tool_calls if isinstance(c, dict) and isinstance(c.get("id"), str)}
        elif m.role == "tool":
            if call_ids is None:
                raise ApiError(
                    400, f"{where}a tool message must follow an assistant message with tool_calls", param="messages"
                )
            if m.tool_call_id and call_ids and m.tool_call_id not in call_ids:
                raise ApiError(
                    400, f"{where}tool_call_id {m.tool_call_id!r} answers none of the preceding tool_calls",
                    param="messages",
                )  # fmt: skip
        else:
            call_ids = None
        out.append(msg)
    return out


class CompletionRequest(GenerationFields):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None

    @model_validator(mode="after")
    def _plain(self) -> CompletionRequest:
        if self.echo or self.suffix:
            raise ValueError("echo and suffix are not supported")
        if isinstance(self.prompt, list) and (not self.prompt or self.stream and len(self.prompt) > 1):
            raise ValueError("prompt: give one string, or a non-empty list of strings (without stream)")
        return self


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(finished: list[Finished]) -> dict[str, int]:
    prompt = sum(f.prompt_tokens for f in finished)
    completion = sum(f.completion_tokens for f in finished)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_response(
    id: str, model: str, message: dict[str, Any], finish_reason: str, finished: Finished
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage([finished]),
    }


def chat_chunk(id: str, model: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
    return {"id": id, "object": "chat.completion.chunk", "created": now(), "model": model, "choices": [choice]}


def completion_response(id: str, model: str, texts: list[str], finished: list[Finished]) -> dict[str, Any]:
    choices = [
        {"index": i, "text": t, "finish_reason": f.reason, "logprobs": None}
        for i, (t, f) in enumerate(zip(texts, finished, strict=True))
    ]
    return {
        "id": id,
        "object": "text_completion",
        "created": now(),
        "model": model,
        "choices": choices,
        "usage": usage(finished),
    }


def completion_chunk(id: str, model: str, text: str, finish_reason: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
    return {"id": id, "object": "text_completion", "created": now(), "model": model, "choices": [choice]}


def usage_chunk(id: str, model: str, object: str, finished: Finished) -> dict[str, Any]:
    return {"id": id, "object": object, "created": now(), "model": model, "choices": [], "usage": usage([finished])}


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event: `data: {...}` and a blank line; the stream ends with `data: [DONE]`."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"
