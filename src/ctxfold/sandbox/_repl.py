"""The life cycle every worker-based sandbox shares: start, run cells, replace a dead worker, close.

:class:`WorkerSandbox` is the base of the built-in backends. A backend says only how to start
one worker process (:meth:`WorkerSandbox._open_worker`, usually through
:func:`ctxfold.sandbox._launch.start_worker`) and, if its worker sees the inputs at other
paths, what it is told (:meth:`WorkerSandbox._init_contexts`); the channel while a cell runs is
:mod:`ctxfold.sandbox._dispatch`'s.
"""

from __future__ import annotations

import atexit
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from ctxfold.closing import Closing
from ctxfold.errors import SandboxError
from ctxfold.sandbox._base import AnswerState, CellResult, ContextSpec, SubcallHandler
from ctxfold.sandbox._cleanup import remove_soon
from ctxfold.sandbox._dispatch import CallDispatch, serve_cell
from ctxfold.sandbox._host import CellClock, ChannelError, WorkerProcess
from ctxfold.sandbox._launch import worker_env
from ctxfold.sandbox._messages import cell_result
from ctxfold.sandbox._tempdirs import host_temp_dir

_LOST = "A fresh worker was started: every variable was lost (the input was reloaded)."
_LIVE: weakref.WeakSet[WorkerSandbox] = weakref.WeakSet()


class WorkerSandbox(Closing):
    """A persistent Python REPL in a worker process that speaks ctxfold's channel (see
    :class:`ctxfold.sandbox.Sandbox`): the base for backends.

    It starts the worker, sends it the inputs, runs cells (the time limit does not count time
    spent waiting on sub-calls unless the sandbox computes meanwhile), answers sub-calls through
    the engine's handler, replaces a worker that died or hung (reporting the cell as lost), and
    at :meth:`close` stops it and removes its scratch folder. A subclass implements
    :meth:`_open_worker` and may override the other ``_`` hooks below.

    Args:
        env: extra environment variables for the worker; it never inherits the host's.
        startup_timeout: seconds a worker may take to start and load the inputs.

    Not thread-safe: one cell at a time (:meth:`close` may come from another thread).
    """

    isolation: str = ""

    def __init__(
        self, *, env: Mapping[str, str] | None = None, startup_timeout: float = 30.0
    ) -> None:
        self._extra_env = dict(env or {})
        self._startup_timeout = startup_timeout
        self._state = "new"
        self._contexts: list[ContextSpec] = []
        self._handler: SubcallHandler | None = None
        self._output_limit = 8000
        self._scratch: str | None = None
        self._worker: WorkerProcess | None = None
        self._calls: CallDispatch | None = None
        self._exec_lock = threading.Lock()
        self._answer = AnswerState()
        self._cells = 0

    @property
    def scratch_dir(self) -> str | None:
        """The worker's working directory, as the host reaches it; gone after :meth:`close`."""
        return self._scratch

    @property
    def worker_pid(self) -> int | None:
        """The pid of the process the host started for the running worker (the worker itself,
        or the wrapper around it; killing it ends the worker), if any."""
        return self._worker.pid if self._worker else None

    # ---- life cycle ----

    def start(
        self, contexts: Sequence[ContextSpec], handler: SubcallHandler, *, output_limit: int = 8000
    ) -> None:
        """Start the worker and load ``contexts`` into it; raises :class:`SandboxError`."""
        if self._state != "new":
            raise SandboxError(f"this sandbox is {self._state}; make a new one")
        self._state = "started"
        self._contexts = [
            ContextSpec(
                name=c["name"], kind=c["kind"], path=c["path"], files=list(c.get("files", []))
            )
            for c in contexts
        ]
        self._handler = handler
        self._output_limit = max(int(output_limit), 200)
        self._track()
        try:
            self._calls = CallDispatch(handler)
            self._worker = self._first_worker()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the worker (and every process it started), remove the scratch dir. Idempotent."""
        if self._state == "closed":
            return
        was = self._state
        self._state = "closed"
        _LIVE.discard(self)
        self._closing(was)
        if not self._exec_lock.acquire(blocking=False):
            # A cell runs in another thread: kill the worker; that thread sees it die, finishes
            # the clean-up and raises SandboxError (closing fds under its feet would be unsafe).
            worker = self._worker
            if worker is not None:
                worker.terminate()
            return
        try:
            self._release_all()
        finally:
            self._exec_lock.release()

    def _release_all(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()
        calls, self._calls = self._calls, None
        if calls is not None:  # handler calls still running finish on their own; replies dropped
            calls.close()
        for path in self._folders():
            remove_soon(path)  # gone now, deleted in the background (see _cleanup.py)

    def _track(self) -> None:
        """Close this sandbox at interpreter exit if nobody else did."""
        _LIVE.add(self)

    # ---- hooks for backends ----

    def _open_worker(self) -> WorkerProcess:
        """Start one worker process, not yet sent its inputs (in :attr:`_scratch`)."""
        raise NotImplementedError

    def _init_contexts(self) -> list[ContextSpec]:
        """The inputs as the worker sees them (a backend may show them at other paths)."""
        return self._contexts

    def _worker_ready(self, message: dict[str, Any]) -> None:
        """The worker answered ``init`` with ``message`` (``op: "ready"``)."""

    def _first_worker(self) -> WorkerProcess:
        """The worker :meth:`start` begins with: a fresh one in a new scratch folder."""
        self._scratch = tempfile.mkdtemp(prefix="ctxfold-sbx-", dir=host_temp_dir())
        return self._fresh_worker()

    def _fresh_worker(self) -> WorkerProcess:
        """Start a worker, send it the inputs, wait until it is ready (also after a death)."""
        return self._handshake(self._open_worker(), self._init_contexts())

    def _closing(self, was: str) -> None:
        """:meth:`close` was called on a sandbox in state ``was`` (before anything is stopped)."""

    def _folders(self) -> list[str]:
        """The host folders removed at :meth:`close`."""
        return [self._scratch] if self._scratch is not None else []

    def _worker_env(self) -> dict[str, str]:
        assert self._scratch is not None
        return worker_env(self._scratch, self._extra_env)

    # ---- the handshake ----

    def _handshake(self, worker: WorkerProcess, contexts: list[ContextSpec]) -> WorkerProcess:
        """Send a started worker ``init`` with ``contexts`` and wait until it is ready."""
        try:
            init = {"op": "init", "contexts": contexts, "output_limit": self._output_limit}
            worker.send(init)
            self._worker_ready(self._await_ready(worker))
        except BaseException:
            worker.terminate()
            worker.release()
            raise
        return worker

    def _await_ready(self, worker: WorkerProcess) -> dict[str, Any]:
        deadline = time.monotonic() + self._startup_timeout
        try:
            message = next_message(worker, ("ready", "init_error"), deadline)
        except TimeoutError:
            raise SandboxError(
                f"the sandbox worker did not start within {self._startup_timeout:g} s"
            ) from None
        if message is None:
            worker.wait_exit(1.0)
            how = worker.describe_exit(worker.terminate())
            output = " ".join(worker.drain.take().split())[-400:]
            raise SandboxError(f"the sandbox worker {how} while starting: {output or 'no output'}")
        if message["op"] == "init_error":
            raise SandboxError(f"the sandbox could not load the input: {message.get('error')}")
        return message

    def add_input(self, spec: ContextSpec) -> None:
        """Load one more input into the running REPL, as variable ``spec["name"]`` (kept after
        a restart). Raises :class:`SandboxError`."""
        with self._exec_lock:
            worker = self._worker
            if self._state != "started" or worker is None:
                raise SandboxError("the sandbox is not running")
            seen = self._show_input(spec)
            worker.send({"op": "add_input", "spec": seen})
            deadline = time.monotonic() + self._startup_timeout
            try:
                message = next_message(worker, ("input_added",), deadline)
            except TimeoutError:
                message = None
            if message is None:
                raise SandboxError("the sandbox worker did not load the new input")
            error = message.get("error")
            if error is not None:
                raise SandboxError(f"the sandbox could not load the input: {str(error)[:300]}")
            self._contexts.append(seen)

    def _show_input(self, spec: ContextSpec) -> ContextSpec:
        """``spec`` as a running worker can reach it. This base can show none."""
        raise SandboxError(f"a {type(self).__name__} cannot take inputs once it has started")

    # ---- cells ----

    def execute(self, code: str, *, timeout: float | None = None) -> CellResult:
        """Run one cell of the model's. ``timeout``: seconds it may run, not counting time
        waiting on sub-calls while the sandbox does not compute."""
        return self._run(code, timeout, setup=False)

    def setup(self, code: str, *, timeout: float | None = None) -> CellResult:
        """Run ctxfold's own set-up code: not numbered, so the model's first cell stays
        ``<cell 1>`` in tracebacks (see ``sandbox/_setup.py``)."""
        return self._run(code, timeout, setup=True)

    def _run(self, code: str, timeout: float | None, *, setup: bool) -> CellResult:
        with self._exec_lock:
            worker, calls = self._worker, self._calls
            if self._state != "started":
                raise SandboxError(
                    f"the sandbox is {'not started' if self._state == 'new' else 'closed'}"
                )
            if worker is None or calls is None:
                raise SandboxError("the sandbox worker is not running (it could not be restarted)")
            started = time.monotonic()
            clock = CellClock(timeout, cpu=worker.cpu_seconds)
            result: dict[str, Any] | None = None
            interrupted, failure = False, "stopped answering"
            self._cells += 1
            if worker.send({"op": "exec", "code": code, "cell": self._cells, "setup": setup}):
                result, interrupted, failure = serve_cell(worker, clock, self._cells, calls)
            try:
                if result is not None:
                    return self._cell_result(worker, result, interrupted, timeout, started)
                return self._replace_worker(worker, failure, interrupted, timeout, started)
            finally:
                if self._state == "closed":  # close() was called from another thread meanwhile
                    self._release_all()

    def _cell_result(
        self,
        worker: WorkerProcess,
        message: dict[str, Any],
        interrupted: bool,
        timeout: float | None,
        started: float,
    ) -> CellResult:
        result = cell_result(message, self._output_limit + 200)
        extra = worker.drain.take()
        if extra:
            result.stderr = f"{result.stderr}\n{extra}" if result.stderr else extra
        if interrupted:
            note = (
                f"TimeoutError: the cell ran past its time limit of {timeout:g} s (time spent "
                "waiting on sub-calls counts only while the sandbox computes) and was interrupted."
            )
            result.error = f"{note}\n{result.error}" if result.error else note
        result.timed_out = interrupted
        result.duration_s = time.monotonic() - started
        result.answer_changed = result.answer_changed or result.answer != self._answer
        self._answer = result.answer
        return result

    def _replace_worker(
        self,
        worker: WorkerProcess,
        failure: str,
        interrupted: bool,
        timeout: float | None,
        started: float,
    ) -> CellResult:
        """The worker died or hung: kill it, start a fresh one, report the cell as lost."""
        exited = worker.wait_exit(0 if interrupted else 1.0)
        code = worker.terminate()
        output = worker.drain.take()
        worker.release()
        self._worker = None
        if self._state != "started":
            raise SandboxError("the sandbox was closed while a cell was running")
        if interrupted and not exited:
            error = (
                f"TimeoutError: the cell ran past its time limit of {timeout:g} s and did not stop "
                f"when interrupted, so its worker was killed. {_LOST}"
            )
        else:
            how = worker.describe_exit(code) if exited else f"{failure}, so it was killed,"
            error = f"WorkerDied: the sandbox worker {how} while running this cell. {_LOST}"
        self._worker = self._fresh_worker()
        changed = self._answer != AnswerState()
        self._answer = AnswerState()
        return CellResult(
            stderr=output,
            error=error,
            timed_out=interrupted,
            restarted=True,
            duration_s=time.monotonic() - started,
            answer_changed=changed,
        )


def next_message(
    worker: WorkerProcess, ops: tuple[str, ...], deadline: float
) -> dict[str, Any] | None:
    """The worker's first message whose ``op`` is one of ``ops`` (others are dropped); ``None``
    when its channel ends or breaks, or it exits, first. Raises :class:`TimeoutError` at
    ``deadline`` (a ``time.monotonic()`` value)."""
    while (left := deadline - time.monotonic()) > 0:
        worker.wait(left)
        try:
            messages, eof = worker.read_messages()
        except ChannelError:
            return None
        for message in messages:
            if isinstance(message, dict) and message.get("op") in ops:
                return message
        if eof or worker.exited():
            return None
    raise TimeoutError


@atexit.register
def _close_all() -> None:
    """Leave no worker behind when the host interpreter exits without closing its sandboxes."""
    for sandbox in list(_LIVE):
        sandbox.close()
