"""Stop strings: text is cut before the first one, across token boundaries and while streaming."""

from __future__ import annotations


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
