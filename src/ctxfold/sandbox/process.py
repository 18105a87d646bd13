"""The "process" sandbox: model code runs in a separate worker process (``_worker.py``).

The host side: it starts the worker (confined as far as this machine allows, see
``_isolation.py``) with a scrubbed environment in a scratch directory, speaks the framed JSON
channel with it, answers its sub-calls through the engine's handler, enforces the cell time limit
(time spent waiting on sub-calls is not counted), and restarts the worker when it dies.
Everything the worker sends is treated as untrusted.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ctxfold.closing import Closing
from ctxfold.errors import SandboxError
from ctxfold.sandbox._base import (
    AnswerState,
    CellResult,
    ContextSpec,
    SubcallHandler,
)
from ctxfold.sandbox._cleanup import remove_soon
from ctxfold.sandbox._host import (
    WORKER_PATH,
    CallGate,
    CellClock,
    ChannelError,
    WorkerProcess,
    compiled_worker,
    spawn,
)
from ctxfold.sandbox._isolation import BWRAP, NONE, WORKER_INSIDE, Limits, Plan, kill_uid, plan_for
from ctxfold.sandbox._messages import cell_result, serve_call
from ctxfold.sandbox._seccomp import filter_fd, syscall_filter
from ctxfold.sandbox._spare import POOL, SparePool, stage_inputs
from ctxfold.sandbox._tempdirs import host_temp_dir

_INTERRUPT_GRACE_S = 2.0
_MIN_ADDRESS_SPACE_MB = 64
_RESIGNAL_S = 0.5
_LOST = "A fresh worker was started: every variable was lost (the input was reloaded)."
_PASSED_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_LIVE: weakref.WeakSet[ProcessSandbox] = weakref.WeakSet()


class ProcessSandbox(Closing):
    """A persistent Python REPL in a separate worker process (see :class:`ctxfold.sandbox.Sandbox`).

    Args:
        python: the interpreter that runs the worker (default: this one). numpy, scipy and
            sympy are importable in the worker when they are installed for that interpreter.
        env: extra environment variables for the worker. The worker never inherits the host's
            environment (so it never sees API keys).
        startup_timeout: seconds the worker may take to start and load the inputs.
        isolate: ``None`` (default): the best isolation this machine allows; ``True``: require
            bubblewrap (else :class:`SandboxError`); ``False``: none at all (for debugging).
        memory_mb: the sandbox's memory. Under bubblewrap the RAM-backed folders below come
            out of it and the rest is the address-space limit of each process it starts;
            elsewhere all of it is.
        cpu_seconds: CPU time the worker may use over its life (it is then restarted).
        max_processes: processes and threads the sandbox may have at once.
        max_file_mb: the largest file the worker may write.
        scratch_mb: under bubblewrap, what the scratch folder (the working directory) may hold
            in all: it is a tmpfs (default: ``memory_mb // 8``, at most 1024). Elsewhere it is a
            host folder bounded per file only.
        tmp_mb: under bubblewrap, what ``/tmp`` may hold, and ``/dev/shm`` as much again
            (default: ``memory_mb // 16``, at most 256).
        spare: start from a worker started beforehand for this configuration, if one is
            ready, and leave a fresh one behind at :meth:`close`, while the pool is held: the
            process-wide pool when :func:`ctxfold.sandbox.keep_warm` holds it, else the
            :class:`~ctxfold.sandbox.SparePool` given here (an ``RLM`` gives its own). A spare
            has been sent nothing before; it serves this sandbox only. ``False``: always start
            a worker of its own.

    :attr:`isolation` names the level in use:

    - ``"bwrap+netns+rlimits"``: bubblewrap namespaces (no network; only the sandbox's own
      processes visible, all killed with it; the filesystem view described in
      ``_isolation.py``, its writable folders RAM-backed and bounded) and the limits. On a root
      host the worker runs as a uid of its own without capabilities.

    At every level but ``"none"`` a seccomp filter refuses new user namespaces and a few risky
    kernel interfaces (see ``_seccomp.py``).
    - ``"unshare-net+rlimits"`` (no bubblewrap): no network, the limits. The worker sees the
      host's filesystem and processes. On a root host it runs as a uid of its own (if its
      interpreter is readable by an unprivileged user; else it stays root, with a warning), so
      it can neither signal nor trace the host, nor read root-only files, nor write where only
      root may (it can still read world-readable files and write to /tmp); processes it
      detaches are killed by uid when the sandbox closes. On a non-root host it has the host's
      uid: the host is made non-dumpable (no ptrace, no reading its /proc environ) but can still
      be signalled, and a process the worker detaches from its group may outlive the sandbox.
    - ``"rlimits"``: as above, with the host's network reachable.
    - ``"none"`` (``isolate=False``): no limits and no uid change.

    A :class:`ctxfold.sandbox.IsolationWarning` is issued once per process when the best level
    is below bubblewrap.

    Not thread-safe: one ``execute`` at a time. Sub-calls are answered on a small thread pool.
    """

    isolation: str

    def __init__(
        self,
        *,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
        isolate: bool | None = None,
        memory_mb: int = 8192,
        cpu_seconds: int = 3600,
        max_processes: int = 256,
        max_file_mb: int = 1024,
        scratch_mb: int | None = None,
        tmp_mb: int | None = None,
        spare: bool | SparePool = True,
    ) -> None:
        scratch_mb = min(1024, memory_mb // 8) if scratch_mb is None else scratch_mb
        tmp_mb = min(256, memory_mb // 16) if tmp_mb is None else tmp_mb
        for name, value in (
            ("memory_mb", memory_mb),
            ("cpu_seconds", cpu_seconds),
            ("max_processes", max_processes),
            ("max_file_mb", max_file_mb),
            ("scratch_mb", scratch_mb),
            ("tmp_mb", tmp_mb),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SandboxError(f"{name} must be a whole number >= 1, got {value!r}")
        if memory_mb - scratch_mb - 2 * tmp_mb < _MIN_ADDRESS_SPACE_MB:
            raise SandboxError(
                f"memory_mb={memory_mb} leaves under {_MIN_ADDRESS_SPACE_MB} MiB for the worker "
                f"once scratch_mb={scratch_mb} and twice tmp_mb={tmp_mb} are taken out"
            )
        self._python = python or sys.executable
        self._extra_env = dict(env or {})
        self._startup_timeout = startup_timeout
        self._plan: Plan = plan_for(isolate)
        self.isolation = self._plan.level
        self._limits = Limits(
            memory_mb=memory_mb,
            cpu_seconds=cpu_seconds,
            max_processes=max_processes,
            max_file_mb=max_file_mb,
            scratch_mb=scratch_mb,
            tmp_mb=tmp_mb,
        )
        # what a spare for this sandbox's successor is made with (see _spare.py)
        self._options: dict[str, Any] = {
            "spare": False,
            "python": python,
            "env": env,
            "startup_timeout": startup_timeout,
            "isolate": isolate,
            "memory_mb": memory_mb,
            "cpu_seconds": cpu_seconds,
            "max_processes": max_processes,
            "max_file_mb": max_file_mb,
            "scratch_mb": scratch_mb,
            "tmp_mb": tmp_mb,
        }
        self._spare = spare
        self._staging: str | None = None  # a spare's inputs directory (bound read-only)
        self._worker_uid: int | None = None
        self._state = "new"
        self._contexts: list[ContextSpec] = []
        self._handler: SubcallHandler | None = None
        self._output_limit = 8000
        self._scratch: str | None = None
        self._worker: WorkerProcess | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._wake: tuple[int, int] | None = None
        self._wake_lock = threading.Lock()
        self._exec_lock = threading.Lock()
        self._answer = AnswerState()
        self._cells = 0
        self._calls = CallGate()

    @property
    def scratch_dir(self) -> str | None:
        """The worker's working directory, as the host reaches it. Under bubblewrap it is a
        tmpfs of ``scratch_mb`` inside the sandbox, reached through ``/proc/PID/root`` while
        the worker runs; otherwise a host folder. Gone after :meth:`close`."""
        worker, scratch = self._worker, self._scratch
        if worker is not None and scratch is not None and self._plan.level == BWRAP:
            inner = worker.inner_pid() if self._plan.sized else None
            if inner is not None:
                return f"/proc/{inner}/root{scratch}"
        return scratch

    @property
    def worker_pid(self) -> int | None:
        """The pid of the process the host started for the running worker (the worker itself,
        or bubblewrap around it; killing it ends the worker), if any."""
        return self._worker.pid if self._worker else None

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
            self._wake = os.pipe()
            for fd in self._wake:
                os.set_blocking(fd, False)
            self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="ctxfold-subcall")
            worker = self._adopt_spare()
            if worker is None:
                self._scratch = tempfile.mkdtemp(prefix="ctxfold-sbx-", dir=host_temp_dir())
                worker = self._launch()
            self._worker = worker
        except BaseException:
            self.close()
            raise

    # ---- spares (see _spare.py) ----

    def _spare_key(self) -> tuple[Any, ...] | None:
        """This sandbox's configuration, when it may use spares (subclasses start their workers
        in their own ways and do not)."""
        if self._spare is False or type(self) is not ProcessSandbox:
            return None
        env = tuple(sorted(self._extra_env.items()))
        isolate = self._options["isolate"]
        return (self._python, env, isolate, self._limits, self._output_limit, self._plan.level)

    def _spares(self) -> SparePool:
        """The pool in use: the process-wide one while it is held, else this sandbox's own."""
        return self._spare if isinstance(self._spare, SparePool) and not POOL.held else POOL

    def _adopt_spare(self) -> WorkerProcess | None:
        """Take over a spare's worker, scratch dir and plan, show it the inputs and send it
        ``init``; ``None`` when there is no spare, or it cannot be used (then start afresh)."""
        key = self._spare_key()
        spare = self._spares().take(key) if key is not None else None
        if not isinstance(spare, ProcessSandbox):
            return None
        worker, staging = spare._worker, spare._staging
        contexts = self._contexts if staging is None else stage_inputs(self._contexts, staging)
        if worker is None or contexts is None:
            spare.close()
            return None
        self._plan, self._scratch, self._staging = spare._plan, spare._scratch, staging
        spare._worker = spare._scratch = spare._staging = None
        spare.close()  # it owns nothing now
        try:
            return self._handshake(worker, contexts)
        except SandboxError:  # it died meanwhile: a fresh start says what is wrong, if anything
            for path in (self._scratch, self._staging):
                if path is not None:
                    remove_soon(path)
            self._scratch = self._staging = None
            return None

    @classmethod
    def _prestarted(
        cls, options: dict[str, Any], output_limit: int, cancelled: threading.Event
    ) -> ProcessSandbox:
        """A spare: a sandbox whose worker is started (imports done) and sent nothing. Gives up
        (raising :class:`SandboxError`) when ``cancelled`` is set, but only once a worker it
        started is far enough to be asked to exit (killed mid-start under bubblewrap, the
        processes inside the sandbox would outlive the call by a moment)."""
        spare = cls(**options)
        spare._state = "spare"
        spare._output_limit = output_limit
        _LIVE.add(spare)
        try:
            spare._scratch = tempfile.mkdtemp(prefix="ctxfold-sbx-", dir=host_temp_dir())
            if spare._plan.level == BWRAP:  # its view is made now: the inputs go in here later
                spare._staging = tempfile.mkdtemp(prefix="ctxfold-sbx-in-", dir=host_temp_dir())
            if cancelled.is_set():
                raise SandboxError("the spare is no longer wanted")
            spare._worker = spare._open_worker()
            spare._await_started(spare._worker)
            if cancelled.is_set():
                raise SandboxError("the spare is no longer wanted")
        except BaseException:
            spare.close()
            raise
        return spare

    def spare_alive(self) -> bool:
        """Whether this spare's worker still runs (the pool checks before handing it out)."""
        return self._state == "spare" and self._worker is not None and not self._worker.exited()

    def _await_started(self, worker: WorkerProcess) -> None:
        """Wait for the worker's ``started`` message (its imports are done)."""
        deadline = time.monotonic() + self._startup_timeout
        while (left := deadline - time.monotonic()) > 0:
            worker.wait(left)
            try:
                messages, eof = worker.read_messages()
            except ChannelError:
                break
            if any(isinstance(m, dict) and m.get("op") == "started" for m in messages):
                return
            if eof or worker.exited():
                break
        raise SandboxError("the spare worker did not start")

    def close(self) -> None:
        """Stop the worker (and every process it started), remove the scratch dir. Idempotent."""
        if self._state == "closed":
            return
        was = self._state
        self._state = "closed"
        _LIVE.discard(self)
        key = self._spare_key() if was == "started" else None
        if key is not None:  # a worker for the next sandbox like this one, while the pool is held
            make = functools.partial(self._prestarted, self._options, self._output_limit)
            self._spares().offer(key, make)
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
        if worker is not None:  # a spare too: asked to exit, it is gone with its namespaces
            worker.stop()
        pool, self._pool = self._pool, None
        if pool is not None:  # handler calls still running finish on their own; replies are dropped
            pool.shutdown(wait=False, cancel_futures=True)
        with self._wake_lock:
            wake, self._wake = self._wake, None
            for fd in wake or ():
                os.close(fd)
        for path in (self._scratch, self._staging):
            if path is not None:
                remove_soon(path)  # gone now, deleted in the background (see _cleanup.py)

    def _spawn(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str,
        pass_fds: tuple[int, ...],
        output_fd: int,
    ) -> subprocess.Popen[bytes]:
        """Start the worker process (``argv`` already holds the isolation wrapper)."""
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

    def _open_worker(self) -> WorkerProcess:
        """Start one worker process (not yet given its inputs). The seam other backends replace."""
        assert self._scratch is not None
        python = shutil.which(self._python)
        if python is None:
            raise SandboxError(f"could not start the sandbox worker ({self._python}): not found")
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        out_r, out_w = os.pipe()
        plan = self._plan
        args = [str(to_worker_r), str(from_worker_w)]
        inputs = [c["path"] for c in self._contexts]
        if self._staging is not None:
            inputs.append(self._staging)
        program = WORKER_PATH
        if os.path.realpath(python) == os.path.realpath(sys.executable):  # bytecode fits it
            shown_as = WORKER_INSIDE if plan.level == BWRAP else str(WORKER_PATH)
            program = compiled_worker(shown_as) or WORKER_PATH
        bwrapped = plan.level == BWRAP
        seccomp = syscall_filter() if plan.level != NONE else None
        seccomp_fd = filter_fd(seccomp) if seccomp and bwrapped else None
        passed = (to_worker_r, from_worker_w) + ((seccomp_fd,) if seccomp_fd is not None else ())
        try:
            if plan.level != NONE:
                args.append(
                    self._limits.to_worker(
                        plan.worker_uid(python),
                        ram_folders=bwrapped and plan.sized,
                        seccomp=None if bwrapped else seccomp,  # bubblewrap loads it itself
                    )
                )
            argv = plan.command(
                python,
                program,
                args,
                scratch=self._scratch,
                inputs=inputs,
                limits=self._limits,
                seccomp_fd=seccomp_fd,
            )
            env, cwd = self._worker_env(), self._scratch
            proc = spawn(
                lambda: self._spawn(argv, env=env, cwd=cwd, pass_fds=passed, output_fd=out_w)
            )
        except (OSError, subprocess.SubprocessError, SandboxError) as exc:
            for fd in (to_worker_w, from_worker_r, out_r):
                os.close(fd)
            if isinstance(exc, SandboxError):
                raise
            raise SandboxError(
                f"could not start the sandbox worker ({self._python}): {exc}"
            ) from exc
        finally:
            for fd in (to_worker_r, from_worker_w, out_w):
                os.close(fd)
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        try:
            return WorkerProcess(
                proc,
                from_worker_r,
                to_worker_w,
                out_r,
                self._output_limit,
                signals_reach_worker=plan.signals_reach_worker,
                shifted_exit_codes=plan.shifted_exit_codes,
                kill=self._kill_strays,
            )
        except BaseException:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise

    def _init_contexts(self) -> list[ContextSpec]:
        """The inputs as the worker sees them (another backend may show them at other paths)."""
        return self._contexts

    def _worker_ready(self, message: dict[str, Any]) -> None:
        """The worker is ready; it runs as ``message["uid"]`` when it left root."""
        uid = message.get("uid")
        self._worker_uid = uid if isinstance(uid, int) and not isinstance(uid, bool) else None
        if self._worker_uid is not None and os.geteuid() == 0 and self._scratch is not None:
            os.chown(self._scratch, self._worker_uid, self._worker_uid)

    def _kill_strays(self) -> None:
        """Fallback levels on a root host: kill every process left with the sandbox's own uid
        (no pid namespace ends them; processes that left the worker's group would live on)."""
        uid = self._plan.uid
        if uid is not None and uid == self._worker_uid and self._plan.level not in (BWRAP, NONE):
            kill_uid(uid)

    def _launch(self) -> WorkerProcess:
        """Spawn a worker, send it the contexts, wait until it is ready."""
        if self._worker_uid is not None and os.geteuid() == 0 and self._scratch is not None:
            os.chown(self._scratch, 0, 0)  # a worker starts as root (without capabilities)
        contexts = self._init_contexts()
        return self._handshake(self._open_worker(), contexts)

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
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SandboxError(
                    f"the sandbox worker did not start within {self._startup_timeout:g} s"
                )
            worker.wait(left)
            try:
                messages, eof = worker.read_messages()
            except ChannelError:
                messages, eof = [], True
            for message in messages:
                op = message.get("op") if isinstance(message, dict) else None
                if op == "ready":
                    ready: dict[str, Any] = message
                    return ready
                if op == "init_error":
                    raise SandboxError(
                        f"the sandbox could not load the input: {message.get('error')}"
                    )
            if eof or worker.exited():
                worker.wait_exit(1.0)
                how = worker.describe_exit(worker.terminate())
                output = " ".join(worker.drain.take().split())[-400:]
                raise SandboxError(
                    f"the sandbox worker {how} while starting: {output or 'no output'}"
                )

    # ---- cells ----

    def execute(
        self, code: str, *, timeout: float | None = None, setup: bool = False
    ) -> CellResult:
        """Run one cell. ``timeout``: seconds it may run, not counting time waiting on sub-calls.
        ``setup``: ctxfold's own set-up code, not numbered (the model's first cell stays
        ``<cell 1>`` in tracebacks; see ``sandbox/_setup.py``)."""
        with self._exec_lock:
            worker = self._worker
            if self._state != "started":
                raise SandboxError(
                    f"the sandbox is {'not started' if self._state == 'new' else 'closed'}"
                )
            if worker is None:
                raise SandboxError("the sandbox worker is not running (it could not be restarted)")
            started = time.monotonic()
            clock = CellClock(timeout, cpu=worker.cpu_seconds)
            result: dict[str, Any] | None = None
            interrupted, failure = False, "stopped answering"
            self._cells += 1
            if worker.send({"op": "exec", "code": code, "cell": self._cells, "setup": setup}):
                result, interrupted, failure = self._serve_cell(worker, clock, self._cells)
            try:
                if result is not None:
                    return self._cell_result(worker, result, interrupted, timeout, started)
                return self._replace_worker(worker, failure, interrupted, timeout, started)
            finally:
                if self._state == "closed":  # close() was called from another thread meanwhile
                    self._release_all()

    def _serve_cell(
        self, worker: WorkerProcess, clock: CellClock, cell_id: int
    ) -> tuple[dict[str, Any] | None, bool, str]:
        """Serve the worker until its result; (result or None, interrupted, why it failed)."""
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
                frames, eof = worker.read_frames()
            except ChannelError as exc:
                return None, interrupted_at is not None, str(exc)
            for message, size in frames:
                op = message.get("op") if isinstance(message, dict) else None
                if op == "result" and message.get("cell") == cell_id:  # not a stale or forged one
                    return message, interrupted_at is not None, ""
                if op == "call":
                    self._dispatch_call(worker, message, size, clock)
            if eof or worker.exited():
                return None, interrupted_at is not None, "closed its channel"

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
            self._pool.submit(self._answer_call, worker, call_id, message, size, clock)
        except RuntimeError:  # the pool is shut down: the sandbox is closing
            self._calls.release(size)
            clock.call_finished()

    def _answer_call(
        self,
        worker: WorkerProcess,
        call_id: int,
        message: dict[str, Any],
        size: int,
        clock: CellClock,
    ) -> None:
        results: list[str] | dict[str, Any] | str = []
        try:
            assert self._handler is not None
            results = serve_call(self._handler, message)
        finally:
            self._calls.release(size)
            worker.send({"op": "reply", "id": call_id, "results": results})
            clock.call_finished()
            self._wake_loop()

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


@atexit.register
def _close_all() -> None:
    """Leave no worker behind when the host interpreter exits without closing its sandboxes."""
    for sandbox in list(_LIVE):
        sandbox.close()
