"""The channel while a cell runs: read the worker's frames until its result, hand its sub-calls
to a thread pool, interrupt it at its time limit.

Used by :class:`~ctxfold.sandbox._repl.WorkerSandbox`; it knows nothing of how the worker was
started. Everything the worker sends is untrusted: a ``result`` counts only when it names the
running cell, a ``call`` only when its id is a whole number, and calls beyond the
:class:`~ctxfold.sandbox._host.CallGate`'s bounds are answered at once with an error.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ctxfold.sandbox._base import SubcallHandler
from ctxfold.sandbox._host import CallGate, CellClock, ChannelError, WorkerProcess
from ctxfold.sandbox._messages import serve_call

INTERRUPT_GRACE_S = 2.0
_RESIGNAL_S = 0.5
_THREADS = 32


class CallDispatch:
    """Answers a worker's ``call`` frames on a thread pool through the engine's handler, and
    wakes the cell loop (:func:`serve_cell`) when a reply went out. Close it once; replies of
    calls still running then are dropped."""

    def __init__(self, handler: SubcallHandler) -> None:
        self._handler = handler
        self._calls = CallGate()
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=_THREADS, thread_name_prefix="ctxfold-subcall"
        )
        self._lock = threading.Lock()
        self._wake: tuple[int, int] | None = os.pipe()
        for fd in self._wake:
            os.set_blocking(fd, False)

    @property
    def wake_fd(self) -> int | None:
        """Readable when a reply was sent since the last :meth:`drain_wake`."""
        return self._wake[0] if self._wake else None

    def dispatch(
        self, worker: WorkerProcess, message: dict[str, Any], size: int, clock: CellClock
    ) -> None:
        """Hand a ``call`` to the pool, or answer it at once with an error when it was refused
        undecoded or would take the requests waiting for an answer past their bounds."""
        call_id = message.get("id")
        if not isinstance(call_id, int) or isinstance(call_id, bool) or self._pool is None:
            return
        refused = message.get("refused")
        if not isinstance(refused, str):
            refused = self._calls.admit(size)
        if refused is not None:
            worker.send({"op": "reply", "id": call_id, "results": f"[error: {refused}]"})
            return
        clock.call_started()
        try:
            self._pool.submit(self._answer, worker, call_id, message, size, clock)
        except RuntimeError:  # the pool is shut down: the sandbox is closing
            self._calls.release(size)
            clock.call_finished()

    def drain_wake(self) -> None:
        with self._lock:
            if self._wake is not None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake[0], 4096)

    def close(self) -> None:
        """Stop taking calls (those running finish on their own) and close the wake pipe."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            wake, self._wake = self._wake, None
            for fd in wake or ():
                os.close(fd)

    def _answer(
        self,
        worker: WorkerProcess,
        call_id: int,
        message: dict[str, Any],
        size: int,
        clock: CellClock,
    ) -> None:
        results: list[str] | dict[str, Any] | str = []
        try:
            results = serve_call(self._handler, message)
        finally:
            self._calls.release(size)
            worker.send({"op": "reply", "id": call_id, "results": results})
            clock.call_finished()
            self._wake_loop()

    def _wake_loop(self) -> None:
        with self._lock:
            if self._wake is not None:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake[1], b"\0")


def serve_cell(
    worker: WorkerProcess, clock: CellClock, cell_id: int, calls: CallDispatch
) -> tuple[dict[str, Any] | None, bool, str]:
    """Serve the worker until the result of cell ``cell_id``: (the result or ``None``, whether
    it was interrupted, why it failed). Past the clock's limit the worker is interrupted, again
    now and then (a cell may swallow one interrupt), for :data:`INTERRUPT_GRACE_S`."""
    interrupted_at: float | None = None
    next_signal = 0.0
    while True:
        now = time.monotonic()
        if interrupted_at is None:
            left = clock.remaining()
            if left is not None and left <= 0:
                interrupted_at = next_signal = now
                continue
            wait = clock.next_check(left)
        else:
            if now >= interrupted_at + INTERRUPT_GRACE_S:
                return None, True, "did not stop when interrupted"
            if now >= next_signal:
                worker.interrupt()
                next_signal = now + _RESIGNAL_S
            wait = min(interrupted_at + INTERRUPT_GRACE_S, next_signal) - now
        wake = calls.wake_fd
        if wake in worker.wait(wait, wake):
            calls.drain_wake()
        try:
            frames, eof = worker.read_frames()
        except ChannelError as exc:
            return None, interrupted_at is not None, str(exc)
        for message, size in frames:
            op = message.get("op") if isinstance(message, dict) else None
            if op == "result" and message.get("cell") == cell_id:  # not a stale or forged one
                return message, interrupted_at is not None, ""
            if op == "call":
                calls.dispatch(worker, message, size, clock)
        if eof or worker.exited():
            return None, interrupted_at is not None, "closed its channel"
