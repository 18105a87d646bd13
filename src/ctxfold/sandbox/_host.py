"""The host's side of one worker process: its pipes, its output drain and its cell clock.

Everything here is plumbing shared by the sandboxes that run ``_worker.py`` (locally, under
bubblewrap, or in a container): framing and reading the channel, draining fds 1 and 2 into a
bounded buffer, waiting on the process, interrupting and killing it, and starting workers from
one long-lived thread. It knows nothing of cells.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import math
import os
import py_compile
import re
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ctxfold.sandbox._tempdirs import host_temp_dir

WORKER_PATH = Path(__file__).with_name("_worker.py")
HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
# JSON values one frame may hold. Decoded, each costs the host about 50-200 bytes, so a frame of
# tiny objects would multiply ~25 times in memory; past this bound it is refused undecoded.
MAX_VALUES = 200_000
_COUNT_VALUES_OVER = 256 * 1024  # smaller frames cannot hold enough values to matter
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_RESULT = re.compile(rb'\s*\{\s*"op"\s*:\s*"result"\s*[,}]')
_CALL_ID = re.compile(rb'\s*\{\s*"op"\s*:\s*"call"\s*,\s*"id"\s*:\s*(\d{1,15})\s*[,}]')
SHUTDOWN_WAIT_S = 1.0
_SEND_TIMEOUT_S = 10.0  # a worker that does not read its channel for this long is given up
_WAIT_SLICE_S = 0.25  # the longest one wait for a worker blocks (see WorkerProcess.wait)
_T = TypeVar("_T")
_SPAWNER: list[ThreadPoolExecutor] = []  # one executor, made again in a forked child


def compiled_worker(shown_as: str) -> Path | None:
    """``_worker.py`` compiled to bytecode for this interpreter, once per process and version of
    the source (a script run from source is compiled at every start: about 7 ms of each worker's
    start-up), naming ``shown_as`` as its file in tracebacks; ``None`` when it cannot be written
    (the source is run then). The file is the host's, read-only, in a private directory removed
    at exit."""
    try:
        info = WORKER_PATH.stat()
    except OSError:
        return None
    return _compiled(shown_as, info.st_mtime_ns, info.st_size)


@functools.cache
def _compiled(shown_as: str, mtime_ns: int, size: int) -> Path | None:
    try:
        folder = tempfile.mkdtemp(prefix="ctxfold-worker-", dir=host_temp_dir())
    except OSError:
        return None
    atexit.register(shutil.rmtree, folder, True)
    target = Path(folder, "_worker.pyc")
    try:
        py_compile.compile(str(WORKER_PATH), cfile=str(target), dfile=shown_as, doraise=True)
        target.chmod(0o444)
        Path(folder).chmod(0o755)
    except (OSError, py_compile.PyCompileError):
        return None
    return target


def spawn(start: Callable[[], _T]) -> _T:
    """Run ``start`` (which starts a worker process) on one long-lived thread.

    A parent-death signal (bubblewrap's ``--die-with-parent``) fires when the *thread* that
    started the process ends, so a sandbox started from a short-lived thread must not have its
    worker killed with that thread.
    """
    if not _SPAWNER:
        _SPAWNER.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctxfold-spawner"))
    try:
        future = _SPAWNER[0].submit(start)
    except RuntimeError:  # the interpreter is shutting down
        return start()
    return future.result()


os.register_at_fork(after_in_child=_SPAWNER.clear)  # the parent's thread is not in the child


class ChannelError(Exception):
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


class OutputDrain:
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


class CellClock:
    """The time a cell has used against its limit.

    Wall time counts while no sub-call of the cell is outstanding. While one is, the cell is
    meant to be waiting, so only the CPU time the sandbox's processes use meanwhile counts
    (``cpu``, a reading in seconds): a cell cannot outrun its limit by keeping a sub-call in
    flight from a thread while it computes. Without ``cpu`` the clock pauses during sub-calls.
    """

    POLL_S = 0.25  # how often the CPU reading is taken while a sub-call is outstanding

    def __init__(self, limit: float | None, cpu: Callable[[], float] | None = None) -> None:
        self._limit = limit
        self._cpu = cpu
        self._lock = threading.Lock()
        self._outstanding = 0
        self._used = 0.0
        self._since = time.monotonic()
        self._cpu_since = 0.0

    def call_started(self) -> None:
        with self._lock:
            if self._outstanding == 0:
                self._used += time.monotonic() - self._since
                self._cpu_since = self._cpu() if self._cpu else 0.0
            self._outstanding += 1

    def call_finished(self) -> None:
        with self._lock:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._used += self._cpu() - self._cpu_since if self._cpu else 0.0
                self._since = time.monotonic()

    def remaining(self) -> float | None:
        """Seconds left, or ``None`` while the clock is not running (no limit, or waiting on a
        sub-call with no CPU reading)."""
        with self._lock:
            if self._limit is None:
                return None
            if not self._outstanding:
                return self._limit - self._used - (time.monotonic() - self._since)
            if self._cpu is None:
                return None
            return self._limit - self._used - (self._cpu() - self._cpu_since)

    def next_check(self, remaining: float | None) -> float | None:
        """How long the host may wait before looking at :meth:`remaining` again."""
        if remaining is None:
            return None
        return min(remaining, self.POLL_S) if self._outstanding else remaining


class CallGate:
    """Bounds the sub-call requests of one sandbox that wait for an answer: at most
    ``max_calls`` requests and ``max_bytes`` of their frames at once (the host's memory for
    queued calls stays bounded whatever the worker sends)."""

    def __init__(self, max_calls: int = 64, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._max_calls, self._max_bytes = max_calls, max_bytes
        self._lock = threading.Lock()
        self._calls = 0
        self._bytes = 0

    def admit(self, size: int) -> str | None:
        """Count one request of ``size`` bytes in; the reason it is refused, if it is."""
        with self._lock:
            if self._calls >= self._max_calls or self._bytes + size > self._max_bytes:
                return (
                    f"too many sub-call requests at once ({self._calls} waiting, "
                    f"{self._bytes:,} bytes); wait for their answers before sending more"
                )
            self._calls += 1
            self._bytes += size
            return None

    def release(self, size: int) -> None:
        """Count an admitted request out (it was answered)."""
        with self._lock:
            self._calls -= 1
            self._bytes -= size


class WorkerProcess:
    """One running worker: its process, channel fds and output drain.

    ``proc`` is what the host started: the worker itself, or a wrapper around it (bubblewrap,
    ``docker run``). ``signals_reach_worker``: a signal to ``proc``'s process group reaches the
    worker (otherwise the worker is interrupted by a message on the channel).
    ``shifted_exit_codes``: the wrapper reports "killed by signal N" as exit code 128+N.
    ``kill``: also called to kill the worker (e.g. ``docker kill``), before ``proc``'s group is.
    """

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        chan_r: int,
        chan_w: int,
        out_r: int,
        limit: int,
        *,
        signals_reach_worker: bool = True,
        shifted_exit_codes: bool = False,
        kill: Callable[[], None] | None = None,
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._chan_r, self._chan_w = chan_r, chan_w
        self._signals_reach_worker = signals_reach_worker
        self._shifted_exit_codes = shifted_exit_codes
        self._kill = kill
        os.set_blocking(chan_r, False)
        os.set_blocking(chan_w, False)
        self._write_lock = threading.Lock()
        self._closed = False
        self._buffer = bytearray()
        self.drain = OutputDrain(out_r, limit)
        self._poll = select.poll()
        self._poll.register(chan_r, select.POLLIN)
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(self.pid)
            self._poll.register(self._pidfd, select.POLLIN)

    def send(self, message: dict[str, Any]) -> bool:
        """Send one message; False when the worker is gone (thread-safe)."""
        payload = json.dumps(message, separators=(",", ":"), default=str).encode("utf-8", "replace")
        frame = memoryview(HEADER.pack(len(payload)) + payload)
        with self._write_lock:
            if self._closed:
                return False
            deadline = time.monotonic() + _SEND_TIMEOUT_S
            poll = select.poll()
            poll.register(self._chan_w, select.POLLOUT)
            try:
                while frame:
                    try:
                        frame = frame[os.write(self._chan_w, frame) :]
                    except BlockingIOError:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return False  # the worker stopped reading (stopped or hung)
                        poll.poll(math.ceil(left * 1000))
            except OSError:
                return False
        return True

    def wait(self, timeout: float | None, extra_fd: int | None = None) -> set[int]:
        """Block until the channel (or ``extra_fd``) is readable, the worker exits, or timeout
        (at most :data:`_WAIT_SLICE_S`); the fds that are ready."""
        if extra_fd is not None:
            self._poll.register(extra_fd, select.POLLIN)
        # Never long (callers loop and recompute what is left): without a pidfd the process is
        # looked at now and then; and a signal (Ctrl-C) taken by another thread of the host does
        # not interrupt this poll, so the KeyboardInterrupt waits until this thread runs again.
        timeout = _WAIT_SLICE_S if timeout is None else min(timeout, _WAIT_SLICE_S)
        try:
            ready = self._poll.poll(max(0, math.ceil(timeout * 1000)))
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
        frames, eof = self.read_frames()
        return [message for message, _ in frames], eof

    def read_frames(self) -> tuple[list[tuple[Any, int]], bool]:
        """Like :meth:`read_messages`, with each message's size in bytes on the channel."""
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

    def _decode(self) -> list[tuple[Any, int]]:
        messages: list[tuple[Any, int]] = []
        offset = 0
        while len(self._buffer) - offset >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buffer, offset)
            if size > MAX_FRAME:
                raise ChannelError(f"sent a message of {size} bytes (over the limit)")
            end = offset + HEADER.size + size
            if len(self._buffer) < end:
                break
            # A frame that is not JSON is dropped; so is one nested too deeply to decode.
            with contextlib.suppress(ValueError, RecursionError):
                messages.append((_decoded(bytes(self._buffer[offset + HEADER.size : end])), size))
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

    def inner_pid(self) -> int | None:
        """The first process below the one the host started (under bubblewrap: the sandbox's
        init, whose ``/proc/PID/root`` is the sandbox's filesystem), if there is one."""
        children = _children_of(self.pid)
        return children[0] if children else None

    def cpu_seconds(self) -> float:
        """CPU time (user + system, reaped children included) of the process the host started
        and every process below it: the worker, its threads and what it started."""
        total, todo, seen = 0, [self.pid], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            total += _cpu_ticks(pid)
            todo += _children_of(pid)
        return total / _TICKS

    def interrupt(self) -> None:
        """Interrupt the running cell (a KeyboardInterrupt in the worker's main thread)."""
        if not self._signals_reach_worker:
            self.send({"op": "interrupt"})
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGINT)

    def terminate(self) -> int | None:
        """Kill the worker's whole process group and reap it; its exit code."""
        children = self._children() if self.proc.returncode is None else []
        if self._kill is not None and self.proc.returncode is None:
            self._kill()
        if self.proc.returncode is None:  # not reaped yet, so the group id cannot be reused
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        _await_exits(children, SHUTDOWN_WAIT_S)
        return self.proc.returncode

    def _children(self) -> list[int]:
        """pidfds of the started process's children, when it is a wrapper (bubblewrap): its
        child is the sandbox's init, which bubblewrap does not wait for (it reports the worker's
        exit and leaves, and the init, killed with it, may still be on its way out)."""
        if self._signals_reach_worker:
            return []
        try:
            listed = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text("ascii")
            pids = [int(p) for p in listed.split()]
        except (OSError, ValueError):
            return []
        fds = []
        for pid in pids:
            with contextlib.suppress(OSError, AttributeError):
                fds.append(os.pidfd_open(pid))
        return fds

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
        """Ask the worker to exit, give it a moment, then kill the group and release. Returns
        when every process of the sandbox is gone."""
        children = self._children()
        if self.send({"op": "shutdown"}):
            self.wait_exit(SHUTDOWN_WAIT_S)
        self.terminate()
        _await_exits(children, SHUTDOWN_WAIT_S)
        self.release()

    def describe_exit(self, code: int | None) -> str:
        """How the worker ended, from ``proc``'s exit code."""
        if self._shifted_exit_codes and code is not None and 128 < code <= 128 + 64:
            code = 128 - code
        return describe_exit(code)


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of ``pid`` in clock ticks (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:  # noqa: PTH123 - hot path, no Path
            fields = stat.read().rpartition(b")")[2].split()
        return sum(int(f) for f in fields[11:15])
    except (OSError, ValueError):
        return 0


def _children_of(pid: int) -> list[int]:
    """The children of every thread of ``pid``."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):  # noqa: PTH208 - hot path
            with open(f"/proc/{pid}/task/{task}/children", "rb") as listed:  # noqa: PTH123
                found += [int(child) for child in listed.read().split()]
    except (OSError, ValueError):
        pass
    return found


def json_values(payload: bytes, limit: int = MAX_VALUES) -> int:
    """An upper bound on the JSON values in ``payload``, counted without decoding it (every
    string, plus every comma and opening bracket outside strings); counting stops once it
    passes ``limit``, so a frame of millions of tiny values costs little to refuse."""
    count, start = 1, 0
    for match in _STRINGS.finditer(payload):
        count += 1 + _structure(payload, start, match.start())
        if count > limit:
            return count
        start = match.end()
    return count + _structure(payload, start, len(payload))


def _structure(payload: bytes, start: int, end: int) -> int:
    return sum(payload.count(mark, start, end) for mark in (b",", b"[", b"{"))


def _decoded(payload: bytes) -> Any:
    """One frame's message. A frame holding more than :data:`MAX_VALUES` values is not decoded:
    a ``call`` becomes ``{"op": "call", "id": ..., "refused": why}`` (answered with that error:
    code may pass a big value to ``rlm_query``); a cell's ``result`` that cannot be read breaks
    the channel (the worker is replaced); anything else is dropped, as garbage is."""
    if len(payload) > _COUNT_VALUES_OVER:
        values = json_values(payload)
        if values > MAX_VALUES:
            if _RESULT.match(payload):
                raise ChannelError(f"sent a result of over {MAX_VALUES:,} values (over the limit)")
            call = _CALL_ID.match(payload)
            if call is None:
                raise ValueError("too many values: dropped")
            why = (
                f"the request holds over {MAX_VALUES:,} JSON values: send fewer items at "
                "once, or big data as one string"
            )
            return {"op": "call", "id": int(call[1]), "refused": why}
    return json.loads(payload)


def _await_exits(pidfds: list[int], timeout: float) -> None:
    """Wait (up to ``timeout`` s) until the processes of ``pidfds`` have exited; close them."""
    deadline = time.monotonic() + timeout
    try:
        for fd in pidfds:
            poll = select.poll()
            poll.register(fd, select.POLLIN)
            poll.poll(max(0, math.ceil((deadline - time.monotonic()) * 1000)))
    finally:
        for fd in pidfds:
            os.close(fd)


def describe_exit(code: int | None) -> str:
    """How a process ended, from its exit code (negative: killed by that signal)."""
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
