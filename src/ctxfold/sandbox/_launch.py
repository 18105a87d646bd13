"""Starting one worker process: its pipes, its scrubbed environment, and the ``Popen`` call.

Both built-in backends start their workers here: the process sandbox hands the channel over as
two extra fds (``fds`` mode) and the docker sandbox over stdin/stdout (``stdio`` mode, since fds
do not cross ``docker run``). Whatever goes wrong becomes a :class:`SandboxError` and no fd or
process is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

from ctxfold.errors import SandboxError
from ctxfold.sandbox._host import WorkerProcess, spawn

_PASSED_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def worker_env(home: str, extra: Mapping[str, str]) -> dict[str, str]:
    """The worker's whole environment: nothing of the host's but a few CPU-tuning variables
    (never an API key), plus ``extra``."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.update({key: os.environ[key] for key in _PASSED_ENV if key in os.environ})
    env.update(extra)
    return env


def start_worker(
    command: Callable[[int, int], list[str]],
    *,
    env: Mapping[str, str],
    output_limit: int,
    cwd: str | None = None,
    stdio: bool = False,
    extra_fds: tuple[int, ...] = (),
    signals_reach_worker: bool = True,
    shifted_exit_codes: bool = False,
    kill: Callable[[], None] | None = None,
    shown_as: str = "",
) -> WorkerProcess:
    """Start the worker that ``command(channel_in_fd, channel_out_fd)`` runs, in a new session.

    With ``stdio`` the channel is the child's stdin/stdout and its stderr is the output;
    otherwise the two channel fds (and ``extra_fds``) are passed through and stdout/stderr are
    the output. ``shown_as`` names the worker in errors.

    Raises:
        SandboxError: it could not be started (``command`` may raise it too).
    """
    to_worker_r, to_worker_w = os.pipe()
    from_worker_r, from_worker_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        argv = command(to_worker_r, from_worker_w)
        streams = _streams(stdio, to_worker_r, from_worker_w, out_w, extra_fds)
        proc = spawn(
            lambda: subprocess.Popen(
                argv,
                env=dict(env),
                cwd=cwd,
                close_fds=True,
                start_new_session=True,
                **streams,
            )
        )
    except (OSError, subprocess.SubprocessError, SandboxError) as exc:
        for fd in (to_worker_w, from_worker_r, out_r):
            os.close(fd)
        if isinstance(exc, SandboxError):
            raise
        raise SandboxError(f"could not start the sandbox worker ({shown_as}): {exc}") from exc
    finally:
        for fd in (to_worker_r, from_worker_w, out_w):
            os.close(fd)
    try:
        return WorkerProcess(
            proc,
            from_worker_r,
            to_worker_w,
            out_r,
            output_limit,
            signals_reach_worker=signals_reach_worker,
            shifted_exit_codes=shifted_exit_codes,
            kill=kill,
        )
    except BaseException:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def _streams(
    stdio: bool, channel_in: int, channel_out: int, output: int, extra_fds: tuple[int, ...]
) -> dict[str, Any]:
    """``Popen``'s stream arguments: the channel on stdin/stdout (``stdio``), or passed as two
    more fds with stdout and stderr both going to ``output``."""
    if stdio:
        return {"stdin": channel_in, "stdout": channel_out, "stderr": output}
    return {
        "stdin": subprocess.DEVNULL,
        "stdout": output,
        "stderr": output,
        "pass_fds": (channel_in, channel_out, *extra_fds),
    }
