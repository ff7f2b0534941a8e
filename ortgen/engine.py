"""The serving engine: many concurrent requests on one model by continuous batching. One worker
thread owns one decode state; requests join it at the next step and leave it the step they finish,
are cancelled or time out. Callable from threads (`Engine`) and from asyncio (`Engine.aio`)."""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np

from ortgen.decode_state import DecodeState, part_end
from ortgen.errors import (
    EngineClosedError,
    InvalidOptionError,
    OverloadedError,
    RequestCancelledError,
    RequestTimeoutError,
)
from ortgen.generator import Generator
from ortgen.metrics import EngineMetrics
from ortgen.requests import _END, Choice, Completion, EngineLimits, Piece, Request
from ortgen.sequence import Sequence

# the caller's types live in requests.py; importable from here, the engine's public module
__all__ = ["AsyncEngine", "Choice", "Completion", "Engine", "EngineLimits", "Piece", "Request"]


class Engine:
    """Continuous batching over one `Generator`. Thread-safe: any thread may `submit`, `generate`
    or `stream`; one worker thread (started on first use) runs every request's rows together.
    A request's tokens depend on its prompt, options and seed only, never on its neighbours.
    The `Generator` stays safe to share: other threads may call it directly meanwhile (each call
    has its own decode state; the worker's is the engine's own)."""

    def __init__(self, generator: Generator, limits: EngineLimits | None = None) -> None:
        self.generator = generator
        self.limits = limits or EngineLimits()
        self.metrics = EngineMetrics()
        self._waiting: collections.deque[Request] = collections.deque()
        self._wake = threading.Condition()
        self._closing = False
        self._running: list[Request] = []  # requests being prefilled or decoded (worker's)
        self._outbox: list[tuple[Request, Any]] = []  # deliveries held until _send (worker's)
        self._worker: threading.Thread | None = None
        self.aio = AsyncEngine(self)

    # ---- threads ----------------------------------------------------------------------------

    def submit(self, prompt: str | list[int], **options: Any) -> Request:
        """Queue a prompt (text or ids) with `generate` options. Raises InvalidOptionError /
        ContextLengthError at once, OverloadedError when the queue is full."""
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        return self._enqueue(prompt, options, inbox, inbox.put)

    def generate(self, prompt: str | list[int], **options: Any) -> Completion:
        return self.submit(prompt, **options).result()

    def stream(self, prompt: str | list[int], **options: Any) -> Iterator[str]:
        """Text pieces of one sequence as they are decided; closing the iterator cancels it."""
        request = self.submit(prompt, **_one_sequence(options))
        try:
            for piece in request:
                if piece.text:
                    yield piece.text
        finally:
            request.cancel()

    def close(self, cancel: bool = False) -> None:
        """Refuse new requests; finish (or with `cancel`, cancel) the others; stop the worker."""
        with self._wake:
            self._closing = True
            requests = list(self._waiting) + list(self._running) if cancel else []
            self._wake.notify()
        for request in requests:
            request.cancel()
        if self._worker is not None:
            self._worker.join()

    # ---- the queue --------------------------------------------------------------------------

    def _enqueue(self, prompt, options: dict, inbox, deliver: Callable) -> Request:
        generator = self.generator
        ids = generator.encode(prompt) if isinstance(prompt, str) else list(prompt)
        opts = generator.options(**options)
        opts.check_vocabulary(generator.manifest.vocab_size)
        if opts.num_return_sequences > self.limits.max_batch:
            raise InvalidOptionError(
                f"num_return_sequences {opts.num_return_sequences} exceeds the engine's "
                f"max_batch {self.limits.max_batch}: ask for fewer sequences"
            )
        sequences = generator.sequences([ids], opts, text=True)
        timeout = self.limits.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        request = Request(sequences, deadline, deliver, _inbox=inbox)
        with self._wake:
            if self._closing:
                raise EngineClosedError("the engine is shutting down: send the request elsewhere")
            if len(self._waiting) >= self.limits.max_queue:
                self.metrics.refused()
                raise OverloadedError(
                    f"{len(self._waiting)} requests are already waiting (max_queue "
                    f"{self.limits.max_queue}): retry later"
                )
            self._waiting.append(request)
            self.metrics.queue_depth.set(len(self._waiting))
            self._start_worker()
            self._wake.notify()
        return request

    def _start_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._serve, name="ortgen-engine", daemon=True)
            self._worker.start()

    def _admit(self, rows_used: int, idle: bool) -> list[Request] | None:
        """Requests that fit in the free rows, in arrival order; waits while idle and nothing
        is queued. None: closing and nothing left to do."""
        with self._wake:
            while idle and not self._waiting and not self._closing:
                self._wake.wait()
            if idle and not self._waiting:
                return None
            admitted, free = [], self.limits.max_batch - rows_used
            while self._waiting:
                head = self._waiting[0]
                if head.cancelled or _expired(head):
                    self._finish(self._waiting.popleft())
                    continue
                if len(head.sequences) > free:
                    break
                admitted.append(self._waiting.popleft())
                free -= len(head.sequences)
            self.metrics.queue_depth.set(len(self._waiting))
            return admitted

    # ---- the worker -------------------------------------------------------------------------

    def _serve(self) -> None:
        """The worker: decode until closed, recovering from a failed step by failing its rows."""
        while True:
            try:
                if not self._decode():
                    return
            except Exception as err:  # a bug or a runtime failure: never hang the callers
                self._send()
                for request in self._running:
                    request.deliver(err)
                self._running = []
                self.metrics.batch_rows.set(0)
                self.metrics.prefill_tokens.set(0)

    def _decode(self) -> bool:
        """Run batches until idle and closed (→ False). Rows are (request, sequence) pairs in
        decode-state order; `prompts` holds the pairs whose prompts are not cached yet."""
        state = DecodeState.for_model(self.generator.model)
        rows: list[tuple[Request, Sequence]] = []
        prompts: collections.deque[tuple[Request, Sequence]] = collections.deque()
        logits = np.zeros((0, self.generator.manifest.vocab_size), np.float32)  # [rows, V]
        self._running = []
        while True:
            admitted = self._admit(len(rows) + len(prompts), idle=not rows and not prompts)
            if admitted is None:
                self._send()  # endings of requests cancelled while queued
                return False
            for request in admitted:
                self._running.append(request)  # before the prefill: a failure reaches it
                prompts.extend((request, s) for s in request.sequences)
            joined, first = self._prefill(state, prompts, decoding=len(rows))
            tokens = self._advance(rows, logits) + first
            rows += joined
            going = [r for r, (req, seq) in enumerate(rows) if _alive(req, seq)]
            if len(going) < len(rows):
                order = state.compact(going)
                rows, tokens = [rows[r] for r in order], [tokens[r] for r in order]
            self.metrics.batch_rows.set(len(rows))  # before the callers hear of it
            self._retire()  # ended rows and dropped prompts: no row of theirs is left
            self._send()  # the callers' threads run while the step runs (it releases the GIL)
            if rows:
                self.metrics.step_rows.observe(len(rows))
                logits = state.step(np.asarray(tokens, dtype=np.int64))  # [rows, V]
            else:
                logits = logits[:0]

    def _prefill(self, state: DecodeState, prompts: collections.deque, decoding: int) -> tuple:
        """Cache queued prompts, first come first served. While at least as many rows are
        decoding as prompts wait, at most `prefill_chunk` prompt tokens (one more where that
        spares a 1-token last part) between two of their steps: a long prompt takes several
        steps and the running streams' inter-token latency stays steady. Otherwise every
        queued prompt at once: the few rows it stalls once lose less than the many prompts
        that chunking would delay step after step (a burst). A cancelled request's prompts
        leave at once. A row that joins chooses its first token at once: its caller hears of it
        before the next prompt is cached. → (rows that joined, their first tokens)."""
        for request in {r for r, _ in prompts if r.cancelled or _expired(r)}:
            self._drop_prompts(state, prompts, request)
        chunk = state.chunked and decoding >= len(prompts)
        budget = self.limits.prefill_chunk if chunk else None
        joined, first = [], []
        while prompts and (budget is None or budget >= 2):  # a part is never 1 token
            request, sequence = prompts[0]
            if request.cancelled or _expired(request):
                self._drop_prompts(state, prompts, request)
                continue
            length, cached = len(sequence.prompt), state.cached
            end = part_end(length, cached, length if budget is None else budget)
            out = state.prefill_part(sequence.prompt, end)
            if budget is not None:
                budget -= end - cached
                self.metrics.prefill_parts.inc()
            if out is not None:
                prompts.popleft()
                joined.append((request, sequence))
                first += self._advance([(request, sequence)], out[None])
                self._send()
        pending = sum(len(sequence.prompt) for _, sequence in prompts) - state.cached
        self.metrics.prefill_tokens.set(pending)
        return joined, first

    def _drop_prompts(self, state: DecodeState, prompts: collections.deque, request) -> None:
        """A cancelled (or timed-out) request's prompts leave the queue, a part-cached one too
        (the request hears of it at the step's `_retire`)."""
        if state.cached and prompts[0][0] is request:
            state.drop_part()
        kept = [pair for pair in prompts if pair[0] is not request]
        prompts.clear()
        prompts.extend(kept)

    def _advance(self, rows: list[tuple[Request, Sequence]], logits: np.ndarray) -> list[int]:
        """Every row chooses and pushes its next token; new text goes to its caller."""
        now = time.monotonic()
        tokens, counts = [], collections.Counter()
        for (request, sequence), row in zip(rows, logits, strict=True):
            if request.cancelled or _expired(request):  # leaves below, before the next step
                tokens.append(0)
                continue
            token = sequence.choose(row)
            sequence.push(token)
            tokens.append(token)
            counts[request] += 1
            if sequence.done:
                sequence.close()
            text = sequence.take()
            reason = sequence.finish_reason if sequence.done else None
            if text or reason:
                self._outbox.append(
                    (request, Piece(request.sequences.index(sequence), text, reason))
                )
        for request, count in counts.items():
            self.metrics.step(request, count, now)
        return tokens

    def _retire(self) -> None:
        """Requests with no row left leave `_running` and hear how they ended."""
        still = []
        for request in self._running:
            if all(s.done for s in request.sequences) or request.cancelled or _expired(request):
                self._finish(request)
            else:
                still.append(request)
        self._running = still

    def _finish(self, request: Request) -> None:
        if all(s.done for s in request.sequences):
            outcome, item = "finished", _END
        elif request.cancelled:
            outcome, item = "cancelled", RequestCancelledError("the request was cancelled")
        else:
            outcome, item = (
                "timeout",
                RequestTimeoutError(
                    f"the request took more than {self.limits.timeout} s: ask for fewer "
                    "tokens or retry when the server is less busy"
                ),
            )
        self.metrics.ended(outcome)
        self._outbox.append((request, item))

    def _send(self) -> None:
        """Hand the held pieces and endings to their callers. Held until the step's own Python
        work is done: a caller woken mid-step contends with the worker for the GIL."""
        outbox, self._outbox = self._outbox, []
        for request, item in outbox:
            request.deliver(item)


def _alive(request: Request, sequence: Sequence) -> bool:
    return not (sequence.done or request.cancelled or _expired(request))


def _expired(request: Request) -> bool:
    return request.deadline is not None and time.monotonic() > request.deadline


def _one_sequence(options: dict) -> dict:
    if (options.get("num_return_sequences") or 1) != 1:
        raise InvalidOptionError("stream() produces one sequence: use num_return_sequences=1")
    return options


class AsyncEngine:
    """The engine for asyncio: `await engine.aio.generate(...)`, `async for piece in
    engine.aio.stream(...)`. Awaiting never blocks the event loop; cancelling the awaiting task
    frees the request's rows within one decode step."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._mail: dict[asyncio.AbstractEventLoop, _Mailbox] = {}
        self._mail_lock = threading.Lock()

    def submit(self, prompt: str | list[int], **options: Any) -> Request:
        """As `Engine.submit`; iterate the request with `async for`."""
        mailbox = self._mailbox(asyncio.get_running_loop())
        inbox: asyncio.Queue = asyncio.Queue()

        def deliver(item: Any) -> None:
            if not mailbox.post(inbox, item):  # the loop is closed: nobody is listening
                request.cancel()

        request = self.engine._enqueue(prompt, options, inbox, deliver)
        return request

    def _mailbox(self, loop: asyncio.AbstractEventLoop) -> _Mailbox:
        with self._mail_lock:
            for closed in [other for other in self._mail if other.is_closed()]:
                del self._mail[closed]
            return self._mail.setdefault(loop, _Mailbox(loop))

    async def generate(self, prompt: str | list[int], **options: Any) -> Completion:
        request = self.submit(prompt, **options)
        async for _ in request:
            pass
        return request.completion()

    async def stream(self, prompt: str | list[int], **options: Any) -> AsyncIterator[str]:
        request = self.submit(prompt, **_one_sequence(options))
        async for piece in request:
            if piece.text:
                yield piece.text


class _Mailbox:
    """Pieces from the worker to one event loop's request inboxes. A decode step delivers a
    piece to every row's caller: they travel together, one wake-up of the loop per step (not
    one per row), in the order they were posted."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue, Any]] = []

    def post(self, inbox: asyncio.Queue, item: Any) -> bool:
        """Queue `item` for `inbox`; False when the loop is closed (it will never arrive)."""
        if self.loop.is_closed():
            return False
        with self._lock:
            self._items.append((inbox, item))
            first = len(self._items) == 1
        if first:  # later posts ride along until the loop runs the flush
            try:
                self.loop.call_soon_threadsafe(self._flush)
            except RuntimeError:  # closed meanwhile
                return False
        return True

    def _flush(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for inbox, item in items:
            inbox.put_nowait(item)
