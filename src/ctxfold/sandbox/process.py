"""The "process" sandbox: model code runs in a separate worker process (``_worker.py``).

This module starts the worker, confined as far as this machine allows (``_isolation.py``), with
a scrubbed environment in a scratch directory, and adopts a spare worker started beforehand
(``_spare.py``) when one is ready. Running cells, answering sub-calls and replacing a dead worker
are :class:`~ctxfold.sandbox.WorkerSandbox`'s (``_repl.py``, ``_dispatch.py``). Everything the
worker sends is treated as untrusted.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctxfold.errors import SandboxError
from ctxfold.sandbox._base import ContextSpec
from ctxfold.sandbox._cleanup import remove_soon
from ctxfold.sandbox._host import WORKER_PATH, WorkerProcess, compiled_worker
from ctxfold.sandbox._isolation import BWRAP, NONE, WORKER_INSIDE, Limits, Plan, kill_uid, plan_for
from ctxfold.sandbox._launch import start_worker
from ctxfold.sandbox._repl import WorkerSandbox, next_message
from ctxfold.sandbox._seccomp import filter_fd, syscall_filter
from ctxfold.sandbox._spare import POOL, SparePool, stage_inputs
from ctxfold.sandbox._tempdirs import host_temp_dir


class ProcessSandbox(WorkerSandbox):
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

    At every level but ``"none"`` a seccomp filter refuses new user namespaces and a few risky
    kernel interfaces (see ``_seccomp.py``).

    A :class:`ctxfold.sandbox.IsolationWarning` is issued once per process when the best level
    is below bubblewrap.

    The life cycle (cells, restarts, close) is :class:`~ctxfold.sandbox.WorkerSandbox`'s; this
    class starts the worker and adopts spares. Not thread-safe: one ``execute`` at a time.
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
        self._limits = Limits.checked(
            memory_mb=memory_mb,
            cpu_seconds=cpu_seconds,
            max_processes=max_processes,
            max_file_mb=max_file_mb,
            scratch_mb=scratch_mb,
            tmp_mb=tmp_mb,
        )
        super().__init__(env=env, startup_timeout=startup_timeout)
        self._python = python or sys.executable
        self._plan: Plan = plan_for(isolate)
        self.isolation = self._plan.level
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
            "scratch_mb": self._limits.scratch_mb,
            "tmp_mb": self._limits.tmp_mb,
        }
        self._spare = spare
        self._staging: str | None = None  # a spare's inputs directory (bound read-only)
        self._worker_uid: int | None = None

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

    # ---- starting a worker ----

    def _first_worker(self) -> WorkerProcess:
        worker = self._adopt_spare()
        if worker is not None:
            return worker
        if self._plan.level == BWRAP:  # bound into the view: inputs added later go in here
            self._staging = self._staging_dir()
        return super()._first_worker()

    @staticmethod
    def _staging_dir() -> str:
        """A folder for inputs shown to the worker by hard links, open to the worker's uid
        (a worker that left root loads inputs added to a running session as that uid)."""
        staging = tempfile.mkdtemp(prefix="ctxfold-sbx-in-", dir=host_temp_dir())
        Path(staging).chmod(0o755)
        return staging

    def _show_input(self, spec: ContextSpec) -> ContextSpec:
        if self._staging is None and self._worker_uid is None:  # it sees the host's files as we do
            return spec
        if self._staging is None:
            self._staging = self._staging_dir()
        staged = stage_inputs([spec], self._staging, start=len(self._contexts) + 1000)
        if staged is None:
            raise SandboxError(
                "the input cannot be shown to the running sandbox (a file on another "
                "filesystem, over 8 MiB, or a folder of over 20,000 files)"
            )
        return staged[0]

    def _fresh_worker(self) -> WorkerProcess:
        if self._worker_uid is not None and os.geteuid() == 0 and self._scratch is not None:
            os.chown(self._scratch, 0, 0)  # a worker starts as root (without capabilities)
        return super()._fresh_worker()

    def _open_worker(self) -> WorkerProcess:
        """Start one worker process (not yet given its inputs), under this sandbox's plan."""
        assert self._scratch is not None
        python = shutil.which(self._python)
        if python is None:
            raise SandboxError(f"could not start the sandbox worker ({self._python}): not found")
        plan, scratch = self._plan, self._scratch
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

        def command(channel_in: int, channel_out: int) -> list[str]:
            args = [str(channel_in), str(channel_out)]
            if plan.level != NONE:
                args.append(
                    self._limits.to_worker(
                        plan.worker_uid(python),
                        ram_folders=bwrapped and plan.sized,
                        seccomp=None if bwrapped else seccomp,  # bubblewrap loads it itself
                    )
                )
            return plan.command(
                python,
                program,
                args,
                scratch=scratch,
                inputs=inputs,
                limits=self._limits,
                seccomp_fd=seccomp_fd,
            )

        try:
            return start_worker(
                command,
                env=self._worker_env(),
                cwd=scratch,
                output_limit=self._output_limit,
                extra_fds=(seccomp_fd,) if seccomp_fd is not None else (),
                signals_reach_worker=plan.signals_reach_worker,
                shifted_exit_codes=plan.shifted_exit_codes,
                kill=self._kill_strays,
                shown_as=self._python,
            )
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)

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

    def _folders(self) -> list[str]:
        return [*super()._folders(), *([self._staging] if self._staging is not None else [])]

    # ---- spares (see _spare.py) ----

    def _closing(self, was: str) -> None:
        key = self._spare_key() if was == "started" else None
        if key is not None:  # a worker for the next sandbox like this one, while the pool is held
            make = functools.partial(self._prestarted, self._options, self._output_limit)
            self._spares().offer(key, make)

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
        spare._track()
        try:
            spare._scratch = tempfile.mkdtemp(prefix="ctxfold-sbx-", dir=host_temp_dir())
            if spare._plan.level == BWRAP:  # its view is made now: the inputs go in here later
                spare._staging = spare._staging_dir()
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
        with contextlib.suppress(TimeoutError):
            if next_message(worker, ("started",), deadline) is not None:
                return
        raise SandboxError("the spare worker did not start")
