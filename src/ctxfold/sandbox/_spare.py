"""Spare workers: a started worker kept ready, so that the next sandbox skips the start-up.

Starting an isolated worker (bubblewrap's namespaces, the interpreter, the worker's imports) takes
about 40 ms on an idle machine, and a run pays it before its first cell. While a :class:`SparePool`
is *held*, a :class:`~ctxfold.sandbox.ProcessSandbox` using it that closes leaves a freshly
started worker behind for the next sandbox of the same configuration, and a sandbox that starts
adopts it. Each :class:`ctxfold.RLM` has a pool of its own, held from its first run until it is
closed (or collected), so its runs start warm and its spare goes with it; the process-wide pool
(:func:`keep_warm`) serves every sandbox while it is held, for programs that make many RLMs.

The rules (tests/test_spare_worker.py checks them):

- A spare has been sent nothing: no input, no code. One sandbox takes it out of the pool, once;
  its inputs are then shown to it through hard links in a directory of its own that bubblewrap
  binds read-only into its view (:func:`stage_inputs`), and it is stopped with that sandbox like
  any other worker. Nothing of a spare outlives the run that adopted it.
- At most one spare per configuration. It is started ``_DELAY_S`` after a sandbox closes, on one
  background thread: a program that lets go of the pool at once (a one-shot ``with RLM(...)``)
  never starts one, and a run that ends is not slowed by it. (Back-to-back runs find none ready
  for the run right after; that one's start-up is then under way during it, for the next.)
- When the last holder lets go, every spare is stopped, and pending starts are cancelled or
  waited for, before the call returns; the same at interpreter exit. A forked child forgets the
  parent's spares (they are the parent's processes).
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ctxfold.closing import Closing
from ctxfold.sandbox._base import ContextSpec

__all__ = ["SparePool", "WarmHold", "keep_warm", "stop_spares"]

_DELAY_S = 0.1  # after a sandbox closes, before its successor's spare starts
_WAIT_S = 60.0  # the longest a caller waits for a spare that is being started
_COPY_MAX = 8 * 1024 * 1024  # an input that cannot be hard-linked is copied up to this size
_MAX_FILES = 20_000  # a folder with more files than this starts a fresh worker instead


class Spare(Protocol):
    """What the pool keeps: a started worker that has been sent nothing."""

    def close(self) -> None: ...

    def spare_alive(self) -> bool: ...


@dataclass(eq=False)
class _Job:
    """The start of one spare: scheduled, then running (on the starter thread), then done."""

    key: Hashable
    make: Callable[[threading.Event], Spare]  # gives up when the event is set
    due: float = 0.0
    running: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()
        if not self.running:
            self.done.set()


class _Starter:
    """One daemon thread that runs every pool's spare starts when they are due, one at a time
    (a thread started per spare costs milliseconds on a loaded machine, in the closing run)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[tuple[_Job, Callable[[_Job], None]]] = []
        self._thread: threading.Thread | None = None

    def schedule(self, job: _Job, run: Callable[[_Job], None]) -> None:
        with self._cond:
            self._queue.append((job, run))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="ctxfold-spares", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._queue = [(j, r) for j, r in self._queue if not j.cancelled.is_set()]
                now = time.monotonic()
                due = [item for item in self._queue if item[0].due <= now]
                if not due:
                    wait = min((j.due for j, _ in self._queue), default=now + 3600) - now
                    self._cond.wait(wait)
                    continue
                self._queue.remove(due[0])
            job, run = due[0]
            run(job)

    def forget(self) -> None:
        self._cond = threading.Condition()
        self._queue = []
        self._thread = None


class SparePool:
    """Spare workers, at most one per sandbox configuration, kept while the pool is held
    (:meth:`hold`); the last hold to be closed stops them all."""

    def __init__(self) -> None:
        _ALL.add(self)
        self._lock = threading.Lock()
        self._holds = 0
        self._closed = False
        self._ready: dict[Hashable, Spare] = {}
        self._jobs: dict[Hashable, _Job] = {}

    # ---- holding ----

    def hold(self) -> WarmHold:
        """Keep spares in this pool until the returned hold is closed."""
        with self._lock:
            self._holds += 1
        return WarmHold(self)

    def release(self) -> None:
        """Let go of one hold (:meth:`WarmHold.close` calls this); the last stops every spare."""
        with self._lock:
            self._holds = max(0, self._holds - 1)
            if self._holds:
                return
        self.clear()

    @property
    def held(self) -> bool:
        return self._holds > 0 and not self._closed

    # ---- spares ----

    def offer(self, key: Hashable, make: Callable[[threading.Event], Spare]) -> None:
        """A sandbox of configuration ``key`` closed: start a spare for its successor (later,
        in the background), unless the pool is not held or one is there or on its way."""
        with self._lock:
            if not self.held or key in self._ready or key in self._jobs:
                return
            job = _Job(key, make, due=time.monotonic() + _DELAY_S)
            self._jobs[key] = job
        _STARTER.schedule(job, self._run)

    def _run(self, job: _Job) -> None:
        with self._lock:
            if job.cancelled.is_set():
                job.done.set()
                return
            job.running = True
        spare: Spare | None = None
        try:
            spare = job.make(job.cancelled)
        except Exception:  # a fresh start later reports whatever is wrong, with its reasons
            spare = None
        finally:
            with self._lock:
                keep = spare is not None and not job.cancelled.is_set() and self.held
                if self._jobs.get(job.key) is job:
                    del self._jobs[job.key]
                if keep and spare is not None:
                    self._ready[job.key] = spare
            if spare is not None and not keep:
                spare.close()
            job.done.set()

    def take(self, key: Hashable) -> Spare | None:
        """The spare for ``key``, now the caller's to use once and close; ``None`` if there is
        none. One being started is waited for (it is further along than a fresh start would be);
        one not due yet is left to start for the sandbox after (back-to-back runs then find one
        from their third on, at the cost of a start-up during the second)."""
        with self._lock:
            spare = self._ready.pop(key, None)
            job = None if spare is not None else self._jobs.get(key)
            if job is not None and not job.running:
                return None
        if job is not None:
            job.done.wait(_WAIT_S)
            with self._lock:
                spare = self._ready.pop(key, None)
        if spare is not None and not spare.spare_alive():
            spare.close()
            spare = None
        return spare

    def clear(self, *, final: bool = False) -> None:
        """Stop every spare and every start in progress; with ``final``, start none again."""
        with self._lock:
            if final:
                self._closed = True
            spares = list(self._ready.values())
            self._ready.clear()
            jobs = list(self._jobs.values())
            self._jobs.clear()
            for job in jobs:
                job.cancel()  # a running start gives up and closes what it made
        for spare in spares:
            spare.close()
        if not _STARTER.on_thread():  # (a start under way there closes what it made itself)
            for job in jobs:
                job.done.wait(_WAIT_S)

    def settle(self, timeout: float = _WAIT_S) -> None:
        """Wait until no spare is scheduled or being started (for benchmarks: nothing runs in the
        background while they measure)."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.done.wait(timeout)

    def spares(self) -> list[Spare]:
        """The spares ready now (for tests and diagnostics; they stay the pool's)."""
        with self._lock:
            return list(self._ready.values())

    def forget(self) -> None:
        """In a forked child: the spares are the parent's processes; drop them unclosed."""
        self._lock = threading.Lock()
        self._holds = 0
        self._ready = {}
        self._jobs = {}


class WarmHold(Closing):
    """A hold on the spare-worker pool (see :func:`keep_warm`); :meth:`close` lets go of it."""

    def __init__(self, pool: SparePool) -> None:
        self._pool: SparePool | None = pool

    def close(self) -> None:
        """Let go of the pool (idempotent); the last hold to go stops every spare."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.release()


def _forget_all() -> None:
    _STARTER.forget()
    for pool in list(_ALL):
        pool.forget()


_STARTER = _Starter()
_ALL: weakref.WeakSet[SparePool] = weakref.WeakSet()
POOL = SparePool()  # the process-wide pool: see keep_warm()
atexit.register(POOL.clear, final=True)  # an RLM's own pool is let go of by its finalizer
os.register_at_fork(after_in_child=_forget_all)


def keep_warm() -> WarmHold:
    """Keep a started worker ready for the next :class:`~ctxfold.sandbox.ProcessSandbox` of each
    configuration in use, process-wide, until the returned hold is closed (it is also a context
    manager). While it is held, every process sandbox (an RLM's too) uses this pool.

    An :class:`ctxfold.RLM` already keeps a spare between its own runs; hold this around code
    that makes many short-lived RLMs. Each spare is one idle worker process (and, under
    bubblewrap, its namespaces). ``ProcessSandbox(spare=False)`` opts one sandbox out.
    """
    return POOL.hold()


def settle_spares() -> None:
    """Wait until the process-wide pool starts no spare worker in the background (benchmarks
    settle it before timing)."""
    POOL.settle()


def stop_spares() -> None:
    """Stop every spare of the process-wide pool now (holds stay: the next sandbox to close
    leaves a new one)."""
    POOL.clear()


# ---- showing a spare its inputs ------------------------------------------------------------


def stage_inputs(
    contexts: Sequence[ContextSpec], staging: str, *, start: int = 0
) -> list[ContextSpec] | None:
    """Hard-link (or copy, when small) each input into ``staging``, the directory a spare's
    bubblewrap view binds read-only; the inputs as the spare sees them, or ``None`` when they
    cannot all be shown that way (the caller then starts a fresh worker, which binds them where
    they are). A folder's files are linked one by one, so nothing beside them becomes visible."""
    staged: list[ContextSpec] = []
    try:
        for index, spec in enumerate(contexts, start):
            home = Path(staging, str(index))
            home.mkdir(0o755)
            files = list(spec.get("files", []))
            source = Path(spec["path"])
            if spec["kind"] == "folder":
                if len(files) > _MAX_FILES or not _link_folder(source, files, home):
                    return None
                path = home
            else:
                path = home / (source.name or "input")
                if not _link_file(source, path):
                    return None
            staged.append(
                ContextSpec(name=spec["name"], kind=spec["kind"], path=str(path), files=files)
            )
    except OSError:
        return None
    return staged


def _link_folder(root: Path, files: list[str], home: Path) -> bool:
    real_root = root.resolve()
    for rel in files:
        parts = rel.split("/")
        if rel.startswith("/") or any(part in ("", ".", "..") for part in parts):
            return False
        source = root.joinpath(*parts)
        # no symbolic link anywhere on the way: it could lead out of the folder
        if source.resolve() != real_root.joinpath(*parts):
            return False
        target = home.joinpath(*parts)
        target.parent.mkdir(0o755, parents=True, exist_ok=True)
        if not _link_file(source, target):
            return False
    return True


def _link_file(source: Path, target: Path) -> bool:
    try:
        target.hardlink_to(source)  # a symbolic link given as the input is followed, as a bind is
        return True
    except OSError:
        pass
    info = source.stat()
    if not stat.S_ISREG(info.st_mode) or info.st_size > _COPY_MAX:
        return False
    shutil.copyfile(source, target)
    return True
