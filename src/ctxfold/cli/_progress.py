"""Live progress of a run on stderr (rich), fed by trace events. Silent when not a terminal."""

from __future__ import annotations

import threading
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from ctxfold.trace import Cell, Event, RootRequest, RootResponse, SubcallEnd, SubcallStart


class Progress:
    """A one-line status: turn n/N, what runs now, sub-calls in flight and done, tokens so far."""

    def __init__(self, iterations: int, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        self._iterations = iterations
        self._lock = threading.Lock()
        self._turn = 0
        self._doing = "starting"
        self._in_flight = 0
        self._done = 0
        self._tokens = 0
        self._live: Live | None = None

    @property
    def enabled(self) -> bool:
        return self._console.is_terminal

    def __enter__(self) -> Progress:
        if self.enabled:
            self._live = Live(self._render(), console=self._console, refresh_per_second=8)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def __call__(self, event: Event) -> None:
        """Update from one trace event (subscribe this to the run's trace)."""
        with self._lock:
            self._apply(event)
            if self._live is not None:
                self._live.update(self._render())

    def _apply(self, event: Event) -> None:
        if event.depth > 0 and not isinstance(event, SubcallStart | SubcallEnd):
            return
        if isinstance(event, RootRequest):
            self._turn = event.turn
            self._doing = "root model thinking"
        elif isinstance(event, RootResponse):
            self._tokens += event.input_tokens + event.output_tokens
            self._doing = "running code"
        elif isinstance(event, SubcallStart):
            self._in_flight += 1
        elif isinstance(event, SubcallEnd):
            self._in_flight = max(0, self._in_flight - 1)
            self._done += 1
            self._tokens += event.input_tokens + event.output_tokens
        elif isinstance(event, Cell):
            first = event.code.strip().splitlines()[0] if event.code.strip() else ""
            self._doing = f"ran: {first[:60]}"

    def _render(self) -> Text:
        return Text.assemble(
            ("ctxfold ", "bold cyan"),
            f"turn {self._turn}/{self._iterations} · {self._doing} · ",
            f"sub-calls {self._in_flight} in flight, {self._done} done · ",
            f"{self._tokens:,} tokens",
        )
