"""The batching engine: one worker thread owns the model; requests wait in a bounded queue and run in batches.

A batch is the first waiting request plus the next ones for the same adapter, up to `max_batch_size`, gathered while
they keep arriving (see BATCH_GAP_S). Prompts are left-padded and run through one `generate()` call: `RowSampler`
samples each row with its own parameters, and `BatchProgress` follows each row after every step — it turns the new
token into text, sends it to the request, and stops the row at its end-of-turn token, a stop string, its
`max_tokens`, or when its client is gone. A finished row answers at once; the batch runs until its last row is done
(static batching: no request joins a running batch).

Images (a vision-language model): a request carries its images' `pixels` ({"pixel_values", "image_grid_thw"}, the
image processor's output), its prompt ids already hold each image's tokens. Requests with and without images share
batches: the batch's pixels are the rows' pixels concatenated in row order, which is the order in which the model
fills image tokens, and Qwen2-VL-family models compute their multimodal positions per row from the attention mask, so
left padding moves nothing. One image-free batch calls generate() exactly as before.

Speculative decoding (`serve.draft_model` or `serve.prompt_lookup`, models/speculative.py): transformers' assisted
generation takes one sequence per generate() call, so with it on every batch is one request — requests run one at a
time, in arrival order. Such a call samples with generate()'s own processors (`SamplingParams.generate_kwargs`, seeded
from the request) rather than RowSampler, whose one-hot scores would reject every prompt-lookup draft; greedy stays
the model's argmax. Each step may keep several tokens (the accepted draft plus one): `BatchProgress` feeds a row every
token that arrived since its last call, so streaming, stop strings, max_tokens and cancellation work as before, a
stop inside a chunk dropping the rest of it. `on_draft(drafted, accepted)` reports each request's draft tokens.
Images are refused with speculative decoding when the model loads (adapters.py).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from thinktune.eval.generate import stop_token_ids
from thinktune.models.speculative import DraftCounter
from thinktune.serve.adapters import ServedModel
from thinktune.serve.detokenize import IncrementalDetokenizer, find_stop, stop_holdback
from thinktune.serve.sampling import RowSampler, SamplingParams

log = logging.getLogger("thinktune.serve")

# A new batch waits for companions while they keep coming: until BATCH_GAP_S passes without an arrival, and never
# longer than BATCH_WAIT_SHARE of a recent batch's duration. Clients that all got their answers at the end of one
# batch come back within milliseconds of each other, so the next batch is full again instead of split in two.
BATCH_GAP_S = 0.02
BATCH_WAIT_SHARE = 0.1


class QueueFull(Exception):
    """More requests are waiting than `max_queue` allows."""


class EngineClosed(Exception):
    """The engine is shutting down and takes no new requests."""


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop" (end of turn or a stop string) | "length" (max_tokens)
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    message: str


Event = TextDelta | Finished | Failed


@dataclass(eq=False)
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]  # called from the worker thread
    adapter: str | None = None  # None = the base model
    deadline: float = math.inf  # time.monotonic() after which nobody waits for the answer
    pixels: dict[str, torch.Tensor] = field(default_factory=dict)  # {"pixel_values", "image_grid_thw"}; {} = no images
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()

    @property
    def abandoned(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline


class RowState:
    """One request inside a running batch: its text so far, what was already sent, why it ended."""

    def __init__(self, request: GenerationRequest, detokenizer: IncrementalDetokenizer, stop_ids: list[int]):
        self.request, self.params = request, request.params
        self.detokenizer = detokenizer
        self.stop_ids = set(stop_ids)
        self.longest_stop = max((len(s) for s in self.params.stop), default=0)
        self.text, self.sent, self.generated = "", 0, 0
        self.finished = False

    def step(self, token: int) -> None:
        if self.finished:
            return
        if self.request.abandoned:
            self.finished = True  # timed out or disconnected: nobody listens
            return
        self.generated += 1
        if token in self.stop_ids and not self.params.ignore_eos:
            self._add(self.detokenizer.flush())
            self.finish("stop")
            return
        self._add(self.detokenizer.add(token))
        if self.generated >= self.params.max_tokens:
            self._add(self.detokenizer.flush())
            self.finish("length")
        elif not self.finished:
            self._send(len(self.text) - stop_holdback(self.text, self.params.stop))

    def finish(self, reason: str) -> None:
        if self.finished:
            return
        self._send(len(self.text))
        self.finished = True
        self.request.emit(Finished(reason, len(self.request.prompt_ids), self.generated))

    def fail(self, message: str) -> None:
        if not self.finished:
            self.finished = True
            self.request.emit(Failed(message))

    def _add(self, piece: str) -> None:
        if not piece or self.finished:
            return
        start = max(0, len(self.text) - self.longest_stop + 1)  # a stop may begin in already-held text
        self.text += piece
        cut = find_stop(self.text, self.params.stop, start) if self.params.stop else None
        if cut is not None:
            self.text = self.text[:cut]
            self.finish("stop")

    def _send(self, end: int) -> None:
        if end > self.sent:
            self.request.emit(TextDelta(self.text[self.sent : end]))
            self.sent = end


class BatchProgress(StoppingCriteria):
    """Called by generate() after every step with the sequences so far: feeds each row the tokens that arrived since
    the last call (one per step; with speculative decoding, the accepted draft plus one) and tells generate() which
    rows are done."""

    def __init__(self, rows: list[RowState], prompt_width: int):
        self.rows, self.seen = rows, prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.seen :].tolist()
        self.seen = input_ids.shape[1]
        for row, tokens in zip(self.rows, new, strict=True):
            for token in tokens:
                row.step(token)
        return torch.tensor([row.finished for row in self.rows], device=input_ids.device)


def batch_pixels(batch: list[GenerationRequest]) -> dict[str, torch.Tensor]:
    """The image inputs of a batch: each key's tensors concatenated in row order ({} when no row has images)."""
    rows = [r.pixels for r in batch if r.pixels]
    return {k: torch.cat([p[k] for p in rows]) for k in rows[0]} if rows else {}


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


class Engine:
    def __init__(
        self,
        served: ServedModel,
        max_batch_size: int = 8,
        max_queue: int = 64,
        batch_gap: float = BATCH_GAP_S,
        on_batch: Callable[[int], None] | None = None,
        stop_ids: list[int] | None = None,
        on_draft: Callable[[int, int], None] | None = None,
    ):
        self.served = served
        self.speculation = served.speculation
        if self.speculation is not None:
            max_batch_size = 1  # assisted generation takes one sequence
        self.tokenizer = copy.deepcopy(served.tokenizer)  # the worker's own: a fast tokenizer is not thread-safe
        self.stop_ids = stop_ids or stop_token_ids(served.tokenizer, served.model)
        self.pad_id = served.tokenizer.pad_token_id if served.tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.max_batch_size, self.max_queue, self.batch_gap = max_batch_size, max_queue, batch_gap
        self.on_batch, self.on_draft = on_batch, on_draft
        self.running = 0  # rows in the batch being generated
        self.batch_seconds = 1.0  # moving average of a batch's duration, for Retry-After
        self._queue: deque[GenerationRequest] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._arrivals = 0
        self._thread: threading.Thread | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def retry_after(self) -> int:
        """Seconds until the requests waiting now have likely been served (at least 1)."""
        batches_ahead = math.ceil((len(self._queue) + 1) / self.max_batch_size)
        return max(1, math.ceil(batches_ahead * self.batch_seconds))

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="thinktune-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Take no new requests, finish the waiting and running ones, then end the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, request: GenerationRequest) -> None:
        with self._cond:
            if self._closing:
                raise EngineClosed()
            self._drop_abandoned()
            if len(self._queue) >= self.max_queue:
                raise QueueFull()
            self._queue.append(request)
            self._arrivals += 1
            self._cond.notify()

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._generate(batch)

    def _next_batch(self) -> list[GenerationRequest] | None:
        with self._cond:
            while True:
                self._drop_abandoned()
                if self._queue:
                    break
                if self._closing:
                    return None
                self._cond.wait()
            batch = [self._queue.popleft()]
            start = last_arrival = time.monotonic()
            until = start + BATCH_WAIT_SHARE * self.batch_seconds
            while True:
                for request in [r for r in self._queue if r.adapter == batch[0].adapter]:
                    if len(batch) >= self.max_batch_size:
                        break
                    if self._fits(batch, request):
                        self._queue.remove(request)
                        batch.append(request)
                left = min(last_arrival + self.batch_gap, until) - time.monotonic()
                if len(batch) >= self.max_batch_size or left <= 0 or self._closing:
                    return batch
                seen = self._arrivals
                self._cond.wait(left)
                if self._arrivals != seen:
                    last_arrival = time.monotonic()

    def _fits(self, batch: list[GenerationRequest], request: GenerationRequest) -> bool:
        """Padded to the longest prompt and run to the longest max_tokens, the batch must stay within the context."""
        width = max(len(r.prompt_ids) for r in [*batch, request])
        steps = max(r.params.max_tokens for r in [*batch, request])
        return width + steps <= self.served.max_context

    def _drop_abandoned(self) -> None:
        """Requests whose client already got a timeout (or left) never reach the model."""
        if any(r.abandoned for r in self._queue):
            self._queue = deque(r for r in self._queue if not r.abandoned)

    def _generate(self, batch: list[GenerationRequest]) -> None:
        self.running, started = len(batch), time.monotonic()
        if self.on_batch:
            self.on_batch(len(batch))
        rows = [RowState(r, IncrementalDetokenizer(self.tokenizer), self.stop_ids) for r in batch]
        try:
            ids, mask = left_pad([r.prompt_ids for r in batch], self.pad_id)
            if self.speculation is not None:
                self._generate_alone(batch[0], rows[0], ids, mask)
                return
            pixels = batch_pixels(batch)
            with self.served.use(batch[0].adapter) as model, torch.inference_mode():
                model.generate(
                    input_ids=ids.to(model.device),
                    attention_mask=mask.to(model.device),
                    **{k: v.to(model.device) for k, v in pixels.items()},
                    max_new_tokens=max(r.params.max_tokens for r in batch),
                    do_sample=False,  # RowSampler has already chosen; greedy takes its choice
                    logits_processor=LogitsProcessorList(
                        [RowSampler([r.params for r in batch], self.stop_ids, model.device)]
                    ),
                    stopping_criteria=StoppingCriteriaList([BatchProgress(rows, ids.shape[1])]),
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.pad_id,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
        except Exception:
            log.exception("generation failed for a batch of %d", len(batch))
            for row in rows:
                row.fail("generation failed; see the server log")
        finally:
            for row in rows:
                if not row.request.abandoned:
                    row.finish("length")  # no-op for rows that already ended
            self.running = 0
            self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * (time.monotonic() - started)

    def _generate_alone(self, request: GenerationRequest, row: RowState, ids: torch.Tensor, mask: torch.Tensor) -> None:
        """One request through assisted generation, sampled by generate() itself with the request's seed."""
        params, counter = request.params, DraftCounter()
        with self.served.use(request.adapter) as model, torch.inference_mode():
            cuda = [model.device] if model.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda), counter.watch(model, ids.shape[1]) as done:
                torch.manual_seed(params.seed if params.seed is not None else random.getrandbits(63))
                out = model.generate(
                    input_ids=ids.to(model.device),
                    attention_mask=mask.to(model.device),
                    max_new_tokens=params.max_tokens,
                    stopping_criteria=StoppingCriteriaList([BatchProgress([row], ids.shape[1])]),
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.pad_id,
                    **params.generate_kwargs(self.stop_ids),
                    **self.speculation.generate_kwargs(),
                )
                done(out.shape[1] - ids.shape[1])
        if self.on_draft:
            self.on_draft(counter.drafted, counter.accepted)
