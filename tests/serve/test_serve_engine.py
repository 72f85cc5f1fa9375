"""The batching engine without HTTP: batch composition, queue bound, shutdown, events per request."""

from __future__ import annotations

import threading
import time

import pytest

from thinktune.serve.engine import Engine, EngineClosed, Finished, GenerationRequest, QueueFull, TextDelta
from thinktune.serve.sampling import SamplingParams
from thinktune.serve.thinking import split_text


class Collector:
    def __init__(self) -> None:
        self.events, self.done = [], threading.Event()

    def emit(self, event) -> None:
        self.events.append(event)
        if isinstance(event, Finished):
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))


def request(collector: Collector, adapter: str | None = None, prompt_len: int = 4, max_tokens: int = 100):
    return GenerationRequest([5] * prompt_len, SamplingParams(max_tokens, temperature=0), collector.emit, adapter)


def test_batches_group_by_adapter_up_to_max_batch_size(make_scripted):
    served = make_scripted(adapters=("a",))
    engine = Engine(served, max_batch_size=3, max_queue=16)
    collectors = [Collector() for _ in range(7)]
    adapters = [None, "a", None, None, "a", None, None]
    for c, a in zip(collectors, adapters, strict=True):
        engine.submit(request(c, a))  # all queued before the worker starts
    engine.start()
    for c in collectors:
        assert c.done.wait(30)
    engine.stop(10)
    assert served.model.calls == [(None, 3), ("a", 2), (None, 2)]  # FIFO head first, companions by adapter
    for c in collectors:
        assert split_text(c.text) == ("I add 2 and 3 to get 5.", "The answer is \\boxed{5}.")
        assert c.events[-1].reason == "stop"


def test_requests_that_would_overflow_the_context_are_not_batched_together(make_scripted):
    served = make_scripted()  # context 512
    engine = Engine(served, max_batch_size=8, max_queue=8)
    long_prompt, long_answer = Collector(), Collector()
    engine.submit(request(long_prompt, prompt_len=400, max_tokens=50))
    engine.submit(request(long_answer, prompt_len=10, max_tokens=300))  # 400 + 300 > 512 when padded together
    engine.start()
    assert long_prompt.done.wait(30) and long_answer.done.wait(30)
    engine.stop(10)
    assert [rows for _, rows in served.model.calls] == [1, 1]


def test_queue_bound_and_shutdown(make_scripted):
    engine = Engine(make_scripted(), max_batch_size=1, max_queue=2)
    waiting = [Collector(), Collector()]
    for c in waiting:
        engine.submit(request(c))
    with pytest.raises(QueueFull):
        engine.submit(request(Collector()))
    assert engine.queue_depth == 2
    engine.start()
    engine.stop(30)  # drains what was accepted
    assert all(c.done.is_set() for c in waiting)
    with pytest.raises(EngineClosed):
        engine.submit(request(Collector()))


def test_retry_after_grows_with_the_queue(make_scripted):
    engine = Engine(make_scripted(), max_batch_size=2, max_queue=100)
    engine.batch_seconds = 3.0
    assert engine.retry_after() == 3
    for _ in range(10):
        engine.submit(request(Collector()))
    assert engine.retry_after() == 18  # 11 requests / 2 per batch = 6 batches x 3 s


def test_a_cancelled_row_stops_the_batch_early(make_scripted):
    served = make_scripted()
    served.model.step_seconds = 0.005
    engine = Engine(served, max_batch_size=2, max_queue=4)
    c = Collector()
    req = GenerationRequest([5, 5], SamplingParams(400, temperature=0, ignore_eos=True), c.emit)
    engine.submit(req)
    engine.start()
    deadline = time.monotonic() + 10
    while not c.events and time.monotonic() < deadline:
        time.sleep(0.005)
    req.cancel()  # as a timed-out or disconnected client does
    engine.stop(10)
    assert served.model.steps < 200  # far from the 400 it asked for
    assert not any(isinstance(e, Finished) for e in c.events)  # nobody is told anything any more
