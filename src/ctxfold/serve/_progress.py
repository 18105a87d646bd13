"""One-line progress notes of a run, read from its trace events, for clients to show (stream
chunks of ``ctxfold serve``, progress notifications of ``ctxfold mcp``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from ctxfold.trace import Cell, Event, RootRequest, SubcallEnd


class ProgressNotes:
    """Turns trace events into notes: ``turn 2: the root model is thinking``, ``turn 2: the
    cell ran (0.4 s), 64 sub-calls done``. Only the top run's turns make notes; sub-calls at
    any depth are counted. Thread-safe (events come from the run's threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.turn = 0
        self.subcalls_done = 0

    def note(self, event: Event) -> str | None:
        """The note ``event`` makes, or ``None``."""
        with self._lock:
            if isinstance(event, SubcallEnd):
                self.subcalls_done += 1
                return None
            if event.depth > 0:
                return None
            if isinstance(event, RootRequest):
                self.turn = event.turn
                return f"turn {event.turn}: the root model is thinking"
            if isinstance(event, Cell):
                outcome = "timed out" if event.timed_out else "failed" if event.error else "ran"
                done = self.subcalls_done
                calls = f", {done} sub-call{'s' * (done != 1)} done" if done else ""
                return f"turn {event.turn}: the cell {outcome} ({event.duration_s:.1f} s){calls}"
            return None


def progress_feed() -> tuple[asyncio.Queue[str], Callable[[Event], None]]:
    """A queue of the running loop that receives the notes of a run, and the listener to
    subscribe to the run's trace (it may be called from any thread)."""
    loop = asyncio.get_running_loop()
    notes: asyncio.Queue[str] = asyncio.Queue()
    progress = ProgressNotes()

    def listen(event: Event) -> None:
        note = progress.note(event)
        if note is not None:
            loop.call_soon_threadsafe(notes.put_nowait, note)

    return notes, listen
