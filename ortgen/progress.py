"""A stage-by-stage progress display on stderr for long CLI jobs (the export)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.status import Status


class StageProgress:
    """`start(name)` closes the previous stage with its time and shows a spinner for the next."""

    def __init__(self) -> None:
        self._console = Console(stderr=True, highlight=False)
        self._status: Status | None = None
        self._stage: str | None = None
        self._started = 0.0

    def __enter__(self) -> StageProgress:
        return self

    def start(self, name: str) -> None:
        self._close("[green]✓[/]")
        self._stage, self._started = name, time.perf_counter()
        self._status = self._console.status(f"{name}…")
        self._status.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close("[green]✓[/]" if exc_type is None else "[red]✗[/]")

    def _close(self, mark: str) -> None:
        if self._status is None:
            return
        self._status.stop()
        elapsed = time.perf_counter() - self._started
        self._console.print(f"{mark} {self._stage} ({elapsed:.1f} s)")
        self._status = None
