"""What a serving-engine caller holds: its limits, a submitted `Request` (cancel it, iterate its
`Piece`s from a thread or with `async for`), and the finished `Completion`."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ortgen.errors import InvalidOptionError
from ortgen.sequence import Sequence

__all__ = ["_END", "Choice", "Completion", "EngineLimits", "Piece", "Request"]


@dataclass(frozen=True)
class EngineLimits:
    """How much the engine takes on at once."""

    max_batch: int = 16  # rows (returned sequences) decoded together at most
    max_queue: int = 64  # requests waiting for rows at most; beyond it submit raises Overloaded
    timeout: float | None = None  # seconds a request may take, queue included; None: no limit
    # prompt tokens cached between two decode steps while rows are decoding (chunked prefill):
    # lower keeps their inter-token latency steadier, higher gives new requests their first
    # token sooner. Whole prompts go at once when fewer rows decode than prompts wait (an idle
    # engine, a burst of arrivals)
    prefill_chunk: int = 128

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise InvalidOptionError(f"max_batch must be ≥ 1, got {self.max_batch}")
        if self.max_queue < 1:
            raise InvalidOptionError(f"max_queue must be ≥ 1, got {self.max_queue}")
        if self.prefill_chunk < 2:
            raise InvalidOptionError(f"prefill_chunk must be ≥ 2 tokens, got {self.prefill_chunk}")
        if self.timeout is not None and not self.timeout > 0:
            raise InvalidOptionError(f"timeout must be > 0 seconds, got {self.timeout}")


@dataclass(frozen=True)
class Piece:
    """Text one of a request's sequences decided since its previous piece."""

    index: int  # which returned sequence (0 … num_return_sequences - 1)
    text: str  # may be "" on a sequence's last piece
    finish_reason: str | None = None  # "stop" | "length" on the sequence's last piece


@dataclass(frozen=True)
class Choice:
    text: str  # the continuation (prompt not included)
    ids: list[int]  # generated ids, EOS included when reached
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (max_new_tokens)


@dataclass(frozen=True)
class Completion:
    prompt_ids: list[int]  # the prompt as generated from (after truncate_prompt)
    choices: list[Choice]  # one per returned sequence

    @property
    def text(self) -> str:
        return self.choices[0].text


_END = object()  # delivered after a request's last piece


@dataclass(eq=False)
class Request:
    """A submitted prompt: its sequences (one row each), deadline, and the channel its pieces
    reach the caller by. Iterate it (threads) or `async for` it (asyncio) for `Piece`s."""

    sequences: list[Sequence]
    deadline: float | None  # time.monotonic() after which it fails with RequestTimeoutError
    deliver: Callable[[Any], None]  # called by the worker: a Piece, an exception, or _END
    submitted: float = field(default_factory=time.monotonic)
    last_token: float | None = None  # when its latest token was pushed (metrics)
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _inbox: Any = None  # queue.SimpleQueue (threads) or asyncio.Queue (asyncio)

    def cancel(self) -> None:
        """Stop generating: the worker frees its rows before the next decode step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def prompt_ids(self) -> list[int]:
        return self.sequences[0].prompt

    def __iter__(self) -> Iterator[Piece]:
        while (item := self._inbox.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def __aiter__(self) -> AsyncIterator[Piece]:
        try:
            while (item := await self._inbox.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:  # the caller stopped listening (disconnect, task.cancel()): free the rows
            self.cancel()

    def completion(self) -> Completion:
        """The result once every piece has been read."""
        choices = [Choice(s.text, list(s.ids), s.finish_reason) for s in self.sequences]
        return Completion(self.prompt_ids, choices)

    def result(self) -> Completion:
        """Wait for the end (threads) and return the result."""
        for _ in self:
            pass
        return self.completion()
