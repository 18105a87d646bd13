"""The "process" sandbox: model code runs in a separate worker process (``_worker.py``).

The host side: it starts the worker with a scrubbed environment in a scratch directory, speaks the
framed JSON channel with it, answers its sub-calls through the engine's handler, enforces the cell
time limit (time spent waiting on sub-calls is not counted), and restarts the worker when it dies.
Everything the worker sends is treated as untrusted.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from ctxfold.errors import SandboxError
from ctxfold.sandbox._base import (
    AnswerState,
    CellResult,
    ContextSpec,
    SubcallHandler,
    SubcallItem,
    SubcallRequest,
)

_WORKER_PATH = Path(__file__).with_name("_worker.py")
_HEADER = struct.Struct(">I")
_MAX_FRAME = 64 * 1024 * 1024
_INTERRUPT_GRACE_S = 2.0
_RESIGNAL_S = 0.5
_SHUTDOWN_WAIT_S = 1.0
_MAX_ANSWER_CHARS = 4_100_000
_LOST = "A fresh worker was started: every variable was lost (the input was reloaded)."
_PASSED_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_LIVE: weakref.WeakSet[ProcessSandbox] = weakref.WeakSet()


class _ChannelError(Exception):
    """The worker closed its channel or broke the framing."""


class _BoundedBytes:
    """Keeps the first and last ``limit/2`` bytes written and counts the rest."""

    def __init__(self, limit: int) -> None:
        self._half = max(limit, 2) // 2
        self._head = bytearray()
        self._tail = bytearray()
        self._cut = 0

    def write(self, data: bytes) -> None:
        room = self._half - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        self._tail += data
        excess = len(self._tail) - self._half
        if excess > 0:
            self._cut += excess
            del self._tail[:excess]

    def take(self) -> str:
        """The text kept so far (with a note of the cut); empties the buffer."""
        head, tail = self._head.decode("utf-8", "replace"), self._tail.decode("utf-8", "replace")
        text = f"{head}\n[... {self._cut} bytes cut ...]\n{tail}" if self._cut else head + tail
        self._head, self._tail, self._cut = bytearray(), bytearray(), 0
        return text


class _OutputDrain:
    """Drains the worker's fds 1 and 2 (a pipe) on a thread into a bounded buffer."""

    def __init__(self, fd: int, limit: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe()
        self._lock = threading.Lock()
        self._buffer = _BoundedBytes(limit)
        self._eof = False
        self._thread = threading.Thread(
            target=self._run, name="ctxfold-sandbox-output", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        poll = select.poll()
        poll.register(self._fd, select.POLLIN)
        poll.register(self._stop_r, select.POLLIN)
        while True:
            if any(fd == self._stop_r for fd, _ in poll.poll()):
                return
            with self._lock:
                if not self._read_locked(16):
                    return

    def _read_locked(self, max_reads: int) -> bool:
        """Read what is there (at most ``max_reads`` chunks); False at EOF."""
        for _ in range(max_reads):
            if self._eof:
                return False
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not data:
                self._eof = True
                return False
            self._buffer.write(data)
        return True

    def take(self) -> str:
        """Everything written so far (bounded), including what still sits in the pipe."""
        with self._lock:
            self._read_locked(256)
            return self._buffer.take()

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join()
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)


class _CellClock:
    """Time a cell has used, not counting time when a sub-call is outstanding."""

    def __init__(self, limit: float | None) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._outstanding = 0
        self._used = 0.0
        self._since = time.monotonic()

    def call_started(self) -> None:
        with self._lock:
            if self._outstanding == 0:
                self._used += time.monotonic() - self._since
            self._outstanding += 1

    def call_finished(self) -> None:
        with self._lock:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._since = time.monotonic()

    def remaining(self) -> float | None:
        """Seconds left, or ``None`` while the clock is not running (no limit, or waiting)."""
        with self._lock:
            if self._limit is None or self._outstanding:
                return None
            return self._limit - self._used - (time.monotonic() - self._since)


class _WorkerProcess:
    """One running worker: its process, channel fds and output drain."""

    def __init__(
        self, proc: subprocess.Popen[bytes], chan_r: int, chan_w: int, out_r: int, limit: int
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._chan_r, self._chan_w = chan_r, chan_w
        os.set_blocking(chan_r, False)
        self._write_lock = threading.Lock()
        self._closed = False
        self._buffer = bytearray()
        self.drain = _OutputDrain(out_r, limit)
        self._poll = select.poll()
        self._poll.register(chan_r, select.POLLIN)
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(self.pid)
            self._poll.register(self._pidfd, select.POLLIN)

    def send(self, message: dict[str, Any]) -> bool:
        """Send one message; False when the worker is gone (thread-safe)."""
        payload = json.dumps(message, separators=(",", ":"), default=str).encode("utf-8", "replace")
        frame = memoryview(_HEADER.pack(len(payload)) + payload)
        with self._write_lock:
            if self._closed:
                return False
            try:
                while frame:
                    frame = frame[os.write(self._chan_w, frame) :]
            except OSError:
                return False
        return True

    def wait(self, timeout: float | None, extra_fd: int | None = None) -> set[int]:
        """Block until the channel (or ``extra_fd``) is readable, the worker exits, or timeout;
        the fds that are ready."""
        if extra_fd is not None:
            self._poll.register(extra_fd, select.POLLIN)
        if self._pidfd is None:  # no pidfd: look at the process now and then
            timeout = 0.25 if timeout is None else min(timeout, 0.25)
        try:
            ready = self._poll.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
        finally:
            if extra_fd is not None:
                self._poll.unregister(extra_fd)
        return {fd for fd, _ in ready}

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the process to exit (without reaping it)."""
        deadline = time.monotonic() + timeout
        while not self.exited():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._pidfd is None:
                time.sleep(min(left, 0.01))
            else:
                poll = select.poll()
                poll.register(self._pidfd, select.POLLIN)
                poll.poll(math.ceil(left * 1000))
        return True

    def read_messages(self) -> tuple[list[Any], bool]:
        """Decode the frames that have arrived; also whether the channel reached EOF."""
        chunks: list[bytes] = []
        eof = False
        for _ in range(64):  # at most 16 MiB per call, so a flood cannot starve the loop
            try:
                data = os.read(self._chan_r, 1 << 18)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                eof = True
                break
            chunks.append(data)
        self._buffer += b"".join(chunks)
        return self._decode(), eof

    def _decode(self) -> list[Any]:
        messages: list[Any] = []
        offset = 0
        while len(self._buffer) - offset >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer, offset)
            if size > _MAX_FRAME:
                raise _ChannelError(f"sent a message of {size} bytes (over the limit)")
            end = offset + _HEADER.size + size
            if len(self._buffer) < end:
                break
            with contextlib.suppress(ValueError):
                messages.append(json.loads(self._buffer[offset + _HEADER.size : end]))
            offset = end
        del self._buffer[:offset]
        return messages

    def exited(self) -> bool:
        """Whether the process has exited (without reaping it)."""
        if self.proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def interrupt(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGINT)

    def terminate(self) -> int | None:
        """Kill the worker's whole process group and reap it; its exit code."""
        if self.proc.returncode is None:  # not reaped yet, so the group id cannot be reused
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        return self.proc.returncode

    def release(self) -> None:
        """Close the fds and stop the drain thread (after :meth:`terminate`)."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            for fd in (self._chan_r, self._chan_w, self._pidfd):
                if fd is not None:
                    os.close(fd)
        self.drain.close()

    def stop(self) -> None:
        """Ask the worker to exit, give it a moment, then kill the group and release."""
        if self.send({"op": "shutdown"}):
            self.wait_exit(_SHUTDOWN_WAIT_S)
        self.terminate()
        self.release()


class ProcessSandbox:
    """A persistent Python REPL in a separate worker process (see :class:`ctxfold.sandbox.Sandbox`).

    Args:
        python: the interpreter that runs the worker (default: this one). numpy, scipy and
            sympy are importable in the worker when they are installed for that interpreter.
        env: extra environment variables for the worker. The worker never inherits the host's
            environment (so it never sees API keys).
        startup_timeout: seconds the worker may take to start and load the inputs.

    Not thread-safe: one ``execute`` at a time. Sub-calls are answered on a small thread pool.
    """

    isolation = "process"

    def __init__(
        self,
        *,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self._python = python or sys.executable
        self._extra_env = dict(env or {})
        self._startup_timeout = startup_timeout
        self._state = "new"
        self._contexts: list[ContextSpec] = []
        self._handler: SubcallHandler | None = None
        self._output_limit = 8000
        self._scratch: str | None = None
        self._worker: _WorkerProcess | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._wake: tuple[int, int] | None = None
        self._wake_lock = threading.Lock()
        self._exec_lock = threading.Lock()
        self._answer = AnswerState()

    @property
    def scratch_dir(self) -> str | None:
        """The worker's working directory (removed by :meth:`close`)."""
        return self._scratch

    @property
    def worker_pid(self) -> int | None:
        """The pid of the running worker process, if any."""
        return self._worker.pid if self._worker else None

    def __enter__(self) -> ProcessSandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- lifecycle ----

    def start(
        self,
        contexts: Sequence[ContextSpec],
        handler: SubcallHandler,
        *,
        output_limit: int = 8000,
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
        _LIVE.add(self)
        try:
            self._scratch = tempfile.mkdtemp(prefix="ctxfold-sbx-")
            self._wake = os.pipe()
            for fd in self._wake:
                os.set_blocking(fd, False)
            self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="ctxfold-subcall")
            self._worker = self._launch()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the worker (and every process it started), remove the scratch dir. Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        _LIVE.discard(self)
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
        pool, self._pool = self._pool, None
        if pool is not None:  # handler calls still running finish on their own; replies are dropped
            pool.shutdown(wait=False, cancel_futures=True)
        with self._wake_lock:
            wake, self._wake = self._wake, None
            for fd in wake or ():
                os.close(fd)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def _spawn(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str,
        pass_fds: tuple[int, ...],
        output_fd: int,
    ) -> subprocess.Popen[bytes]:
        """Start the worker process. The one place to wrap for more isolation (netns, rlimits)."""
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output_fd,
            stderr=output_fd,
            env=env,
            cwd=cwd,
            pass_fds=pass_fds,
            close_fds=True,
            start_new_session=True,
        )

    def _worker_env(self) -> dict[str, str]:
        assert self._scratch is not None
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": self._scratch,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
        }
        env.update({key: os.environ[key] for key in _PASSED_ENV if key in os.environ})
        env.update(self._extra_env)
        return env

    def _launch(self) -> _WorkerProcess:
        """Spawn a worker, send it the contexts, wait until it is ready."""
        assert self._scratch is not None
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        out_r, out_w = os.pipe()
        argv = [self._python, "-I", "-u", str(_WORKER_PATH), str(to_worker_r), str(from_worker_w)]
        try:
            proc = self._spawn(
                argv,
                env=self._worker_env(),
                cwd=self._scratch,
                pass_fds=(to_worker_r, from_worker_w),
                output_fd=out_w,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            for fd in (to_worker_w, from_worker_r, out_r):
                os.close(fd)
            raise SandboxError(
                f"could not start the sandbox worker ({self._python}): {exc}"
            ) from exc
        finally:
            for fd in (to_worker_r, from_worker_w, out_w):
                os.close(fd)
        try:
            worker = _WorkerProcess(proc, from_worker_r, to_worker_w, out_r, self._output_limit)
        except BaseException:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        try:
            init = {"op": "init", "contexts": self._contexts, "output_limit": self._output_limit}
            worker.send(init)
            self._await_ready(worker)
        except BaseException:
            worker.terminate()
            worker.release()
            raise
        return worker

    def _await_ready(self, worker: _WorkerProcess) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SandboxError(
                    f"the sandbox worker did not start within {self._startup_timeout:g} s"
                )
            worker.wait(left)
            try:
                messages, eof = worker.read_messages()
            except _ChannelError:
                messages, eof = [], True
            for message in messages:
                op = message.get("op") if isinstance(message, dict) else None
                if op == "ready":
                    return
                if op == "init_error":
                    raise SandboxError(
                        f"the sandbox could not load the input: {message.get('error')}"
                    )
            if eof or worker.exited():
                how = _describe_exit(worker.terminate())
                output = " ".join(worker.drain.take().split())[-400:]
                raise SandboxError(
                    f"the sandbox worker {how} while starting: {output or 'no output'}"
                )

    # ---- cells ----

    def execute(self, code: str, *, timeout: float | None = None) -> CellResult:
        """Run one cell. ``timeout``: seconds it may run, not counting time waiting on sub-calls."""
        with self._exec_lock:
            worker = self._worker
            if self._state != "started":
                raise SandboxError(
                    f"the sandbox is {'not started' if self._state == 'new' else 'closed'}"
                )
            if worker is None:
                raise SandboxError("the sandbox worker is not running (it could not be restarted)")
            started = time.monotonic()
            clock = _CellClock(timeout)
            result: dict[str, Any] | None = None
            interrupted, failure = False, "stopped answering"
            if worker.send({"op": "exec", "code": code}):
                result, interrupted, failure = self._serve_cell(worker, clock)
            try:
                if result is not None:
                    return self._cell_result(worker, result, interrupted, timeout, started)
                return self._replace_worker(worker, failure, interrupted, timeout, started)
            finally:
                if self._state == "closed":  # close() was called from another thread meanwhile
                    self._release_all()

    def _serve_cell(
        self, worker: _WorkerProcess, clock: _CellClock
    ) -> tuple[dict[str, Any] | None, bool, str]:
        """Serve the worker until its result; (result or None, interrupted, why it failed)."""
        interrupted_at: float | None = None
        next_signal = 0.0
        while True:
            now = time.monotonic()
            if interrupted_at is None:
                wait = clock.remaining()
                if wait is not None and wait <= 0:
                    interrupted_at = next_signal = now
                    continue
            else:
                if now >= interrupted_at + _INTERRUPT_GRACE_S:
                    return None, True, "did not stop when interrupted"
                if now >= next_signal:  # again now and then: a cell may swallow one interrupt
                    worker.interrupt()
                    next_signal = now + _RESIGNAL_S
                wait = min(interrupted_at + _INTERRUPT_GRACE_S, next_signal) - now
            wake = self._wake[0] if self._wake else None
            if wake in worker.wait(wait, wake):
                self._drain_wake()
            try:
                messages, eof = worker.read_messages()
            except _ChannelError as exc:
                return None, interrupted_at is not None, str(exc)
            for message in messages:
                op = message.get("op") if isinstance(message, dict) else None
                if op == "result":
                    return message, interrupted_at is not None, ""
                if op == "call":
                    self._dispatch_call(worker, message, clock)
            if eof or worker.exited():
                return None, interrupted_at is not None, "closed its channel"

    def _cell_result(
        self,
        worker: _WorkerProcess,
        message: dict[str, Any],
        interrupted: bool,
        timeout: float | None,
        started: float,
    ) -> CellResult:
        limit = self._output_limit + 200
        stderr = _cut(_text(message, "stderr"), limit)
        extra = worker.drain.take()
        if extra:
            stderr = f"{stderr}\n{extra}" if stderr else extra
        error = message.get("error")
        error = _cut(error, limit) if isinstance(error, str) else None
        if interrupted:
            note = (
                f"TimeoutError: the cell ran past its time limit of {timeout:g} s (time spent "
                "waiting on sub-calls is not counted) and was interrupted."
            )
            error = f"{note}\n{error}" if error else note
        answer = _answer_of(message.get("answer"))
        changed = bool(message.get("answer_changed")) or answer != self._answer
        self._answer = answer
        restored = message.get("restored")
        return CellResult(
            stdout=_cut(_text(message, "stdout"), limit),
            stderr=stderr,
            error=error,
            timed_out=interrupted,
            duration_s=time.monotonic() - started,
            answer=answer,
            answer_changed=changed,
            restored=[r for r in restored if isinstance(r, str)]
            if isinstance(restored, list)
            else [],
        )

    def _replace_worker(
        self,
        worker: _WorkerProcess,
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
            how = _describe_exit(code) if exited else f"{failure}, so it was killed,"
            error = f"WorkerDied: the sandbox worker {how} while running this cell. {_LOST}"
        self._worker = self._launch()
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

    # ---- sub-calls ----

    def _dispatch_call(
        self, worker: _WorkerProcess, message: dict[str, Any], clock: _CellClock
    ) -> None:
        call_id = message.get("id")
        if not isinstance(call_id, int) or isinstance(call_id, bool) or self._pool is None:
            return
        clock.call_started()
        try:
            self._pool.submit(self._answer_call, worker, call_id, message, clock)
        except RuntimeError:  # the pool is shut down: the sandbox is closing
            clock.call_finished()

    def _answer_call(
        self, worker: _WorkerProcess, call_id: int, message: dict[str, Any], clock: _CellClock
    ) -> None:
        results: list[str] | dict[str, Any] = []
        try:
            results = self._run_handler(message)
        finally:
            worker.send({"op": "reply", "id": call_id, "results": results})
            clock.call_finished()
            self._wake_loop()

    def _run_handler(self, message: dict[str, Any]) -> list[str] | dict[str, Any]:
        kind, raw_items = message.get("kind"), message.get("items")
        items = raw_items if isinstance(raw_items, list) else []
        assert self._handler is not None
        if kind == "budget":
            try:
                reply = self._handler(SubcallRequest("budget", ()))
            except Exception as exc:
                return {"error": f"budget() failed: {exc}"}
            return reply if isinstance(reply, dict) else {}
        if kind not in ("llm", "rlm"):
            return ["Error: unknown kind of sub-call"] * len(items)
        slots = [_parse_item(item, kind) for item in items]
        valid = [slot for slot in slots if isinstance(slot, SubcallItem)]
        answers: list[str] = []
        if valid:
            try:
                reply = self._handler(SubcallRequest(kind, tuple(valid)))
            except Exception as exc:
                reply = [f"[error: the sub-call failed: {type(exc).__name__}: {exc}]"] * len(valid)
            answers = _as_answers(reply, len(valid))
        it = iter(answers)
        return [next(it) if isinstance(slot, SubcallItem) else slot for slot in slots]

    def _wake_loop(self) -> None:
        with self._wake_lock:
            if self._wake is not None:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake[1], b"\0")

    def _drain_wake(self) -> None:
        with self._wake_lock:
            if self._wake is not None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake[0], 4096)


def _parse_item(item: Any, kind: str) -> SubcallItem | str:
    if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
        return "Error: invalid sub-call item"
    system, model = item.get("system"), item.get("model")
    if not isinstance(system, str | None) or not isinstance(model, str | None):
        return "Error: invalid sub-call item"
    context = item.get("context") if kind == "rlm" else None
    return SubcallItem(prompt=item["prompt"], system=system, model=model, context=context)


def _as_answers(reply: Any, count: int) -> list[str]:
    values = reply if isinstance(reply, list) else []
    answers = [v if isinstance(v, str) else f"Error: bad sub-call answer {v!r:.80}" for v in values]
    return answers[:count] + ["Error: the sub-call gave no answer"] * (count - len(answers))


def _text(message: dict[str, Any], key: str) -> str:
    value = message.get(key)
    return value if isinstance(value, str) else ""


def _cut(text: str, limit: int) -> str:
    """Head and tail of ``text`` (the worker cuts already; this guards against a rogue one)."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


def _answer_of(value: Any) -> AnswerState:
    if not isinstance(value, dict):
        return AnswerState()
    content = value.get("content")
    content = content[:_MAX_ANSWER_CHARS] if isinstance(content, str) else ""
    return AnswerState(content=content, ready=value.get("ready") is True)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    oom = " (most likely it ran out of memory)" if -code == signal.SIGKILL else ""
    return f"was killed by {name}{oom}"


@atexit.register
def _close_all() -> None:
    """Leave no worker behind when the host interpreter exits without closing its sandboxes."""
    for sandbox in list(_LIVE):
        sandbox.close()
