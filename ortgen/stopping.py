"""Per-row output bookkeeping: generated ids, EOS, stop strings (also across token boundaries and
while streaming), and the text pieces a row has decided so far."""

from __future__ import annotations

from ortgen.tokenizer import TextStream, Tokenizer


class StopText:
    """Cuts text before the first stop string; holds back a tail that may still become one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""  # undecided tail: a prefix of some stop string
        self.hit = False

    def feed(self, text: str) -> str:
        """Add text; return what is now certain to precede any stop string."""
        if self.hit:
            return ""
        buffer = self._pending + text
        cut = min((i for i in (buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit, self._pending = True, ""
            return buffer[:cut]
        keep = self._undecided_tail(buffer)
        self._pending = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """The held-back tail, once no more text will come."""
        rest, self._pending = self._pending, ""
        return rest

    def _undecided_tail(self, buffer: str) -> int:
        """Length of the longest suffix of `buffer` that is a proper prefix of a stop string."""
        for size in range(min(len(buffer), max(map(len, self._stops), default=1) - 1), 0, -1):
            if any(s.startswith(buffer[-size:]) for s in self._stops):
                return size
        return 0


class Row:
    """One sequence being generated: its history for the processors, and its decided text."""

    def __init__(
        self,
        prompt: list[int],
        stop_ids: frozenset[int],
        stop_strings: tuple[str, ...],
        tokenizer: Tokenizer | None,
    ) -> None:
        self.history = list(prompt)  # prompt + generated ids: repetition penalty, n-grams
        self.ids: list[int] = []  # generated ids, EOS or the stop string's last token included
        self.done = False
        self._stop_ids = stop_ids
        self._text = TextStream(tokenizer) if tokenizer is not None else None
        self._stops = StopText(stop_strings)
        self._pieces: list[str] = []  # decided text not yet taken by a stream
        self.text = ""  # all decided text so far

    def push(self, token_id: int) -> None:
        self.ids.append(token_id)
        self.history.append(token_id)
        if token_id in self._stop_ids:
            self.done = True
        if self._text is not None:
            self._decide(self._stops.feed(self._text.push(token_id)))
            self.done = self.done or self._stops.hit

    def close(self) -> None:
        """No more tokens: release text held back for UTF-8 or stop-string reasons."""
        if self._text is not None and not self._stops.hit:
            self._decide(self._stops.feed(self._text.finish()))
            self._decide(self._stops.flush())

    def take(self) -> str:
        """Text decided since the last call (for streaming)."""
        piece, self._pieces = "".join(self._pieces), []
        return piece

    def _decide(self, piece: str) -> None:
        if piece:
            self._pieces.append(piece)
            self.text += piece
