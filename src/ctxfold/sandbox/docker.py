"""The "docker" sandbox: the same worker as the process sandbox, in a throw-away container.

The container has no network, a read-only root, a private ``/tmp``, a memory and a process cap,
no capabilities, and sees only the worker script, the inputs (read-only, under
``/ctxfold/input/N``) and the scratch directory (``/ctxfold/scratch``, read-write). Extra fds do
not cross ``docker run``, so the channel runs over the container's stdin and stdout (the worker's
``stdio`` mode) and everything model code prints comes back on its stderr.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence

from ctxfold.errors import SandboxError
from ctxfold.sandbox._base import ContextSpec
from ctxfold.sandbox._host import WORKER_PATH, WorkerProcess
from ctxfold.sandbox._isolation import Limits
from ctxfold.sandbox._launch import start_worker
from ctxfold.sandbox._repl import WorkerSandbox

_INSIDE = "/ctxfold"
_SCRATCH = f"{_INSIDE}/scratch"
_WORKER = f"{_INSIDE}/_worker.py"
_INFO_TIMEOUT_S = 15.0
_KILL_TIMEOUT_S = 15.0
_FIXED_ENV = ("HOME", "PATH")
_PATH = "/usr/local/bin:/usr/bin:/bin"


def _input(index: int) -> str:
    return f"{_INSIDE}/input/{index}"


class DockerSandbox(WorkerSandbox):
    """A persistent Python REPL in a Docker container (see :class:`ctxfold.sandbox.Sandbox`).

    Args:
        image: the image to run; it needs a Python 3.10+ at ``python`` (numpy, scipy and sympy
            only if they are installed in the image; ``python:3.11-slim`` has none of them).
        python: the interpreter inside the image.
        docker: the docker CLI.
        env: extra environment variables for the worker.
        startup_timeout: seconds the container may take to start (pulling the image counts).
        memory_mb: the container's memory cap (swap included).
        cpu_seconds: CPU time the worker may use over its life (it is then restarted).
        max_processes: processes and threads the container may have at once.
        max_file_mb: the largest file the worker may write.

    Raises :class:`SandboxError` when no Docker engine answers ``docker info``.
    """

    def __init__(
        self,
        *,
        image: str = "python:3.11-slim",
        python: str = "python",
        docker: str = "docker",
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 120.0,
        memory_mb: int = 8192,
        cpu_seconds: int = 3600,
        max_processes: int = 256,
        max_file_mb: int = 1024,
    ) -> None:
        self._limits = Limits.checked(
            memory_mb=memory_mb,
            cpu_seconds=cpu_seconds,
            max_processes=max_processes,
            max_file_mb=max_file_mb,
        )
        super().__init__(env=env, startup_timeout=startup_timeout)
        self.isolation = "docker"
        self._image = image
        self._inner_python = python
        self._docker = _engine(docker)

    def _init_contexts(self) -> list[ContextSpec]:
        return [
            ContextSpec(name=c["name"], kind=c["kind"], path=_input(i), files=c["files"])
            for i, c in enumerate(self._contexts)
        ]

    def _open_worker(self) -> WorkerProcess:
        assert self._scratch is not None
        name = f"ctxfold-{secrets.token_hex(6)}"
        env = self._worker_env()
        argv = docker_run_argv(
            self._docker,
            name=name,
            image=self._image,
            python=self._inner_python,
            limits=self._limits,
            scratch=self._scratch,
            inputs=[c["path"] for c in self._contexts],
            env=env,
        )
        cli_env = {**os.environ, **{k: v for k, v in env.items() if k not in _FIXED_ENV}}
        return stdio_worker(
            argv,
            env=cli_env,
            output_limit=self._output_limit,
            kill=functools.partial(_docker_kill, self._docker, name),
        )


def docker_run_argv(
    docker: str,
    *,
    name: str,
    image: str,
    python: str,
    limits: Limits,
    scratch: str,
    inputs: Sequence[str],
    env: Mapping[str, str],
) -> list[str]:
    """The ``docker run`` command line for one worker container."""
    argv = [docker, "run", "-i", "--rm", "--init", "--name", name, "--network", "none"]
    argv += ["--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev", "--ipc", "private"]
    argv += ["--memory", f"{limits.memory_mb}m", "--memory-swap", f"{limits.memory_mb}m"]
    argv += ["--pids-limit", str(limits.max_processes), "--cap-drop", "ALL"]
    argv += ["--security-opt", "no-new-privileges", "--user", f"{os.getuid()}:{os.getgid()}"]
    argv += ["--workdir", _SCRATCH, "-e", f"HOME={_SCRATCH}", "-e", f"PATH={_PATH}"]
    for key in sorted(env):  # values travel in the CLI's environment, not on its command line
        if key not in _FIXED_ENV:
            argv += ["-e", key]
    argv += _mount(str(WORKER_PATH), _WORKER, read_only=True)
    for i, path in enumerate(inputs):
        argv += _mount(path, _input(i), read_only=True)
    argv += _mount(scratch, _SCRATCH, read_only=False)
    worker_limits = limits.to_worker(None, processes=False)  # --pids-limit caps processes
    return [*argv, image, python, "-I", "-u", _WORKER, "stdio", worker_limits]


def _mount(source: str, target: str, *, read_only: bool) -> list[str]:
    if "," in source or "=" in source:
        raise SandboxError(f"the docker sandbox cannot mount a path with ',' or '=': {source!r}")
    spec = f"type=bind,source={os.path.realpath(source)},target={target}"
    return ["--mount", f"{spec},readonly" if read_only else spec]


def stdio_worker(
    argv: list[str],
    *,
    env: Mapping[str, str],
    output_limit: int,
    kill: Callable[[], None] | None = None,
    cwd: str | None = None,
) -> WorkerProcess:
    """Start ``argv`` (a worker in ``stdio`` mode, or a command that runs one) with the channel
    on its stdin and stdout and its stderr drained as the output."""
    return start_worker(
        lambda _in, _out: argv,
        env=env,
        output_limit=output_limit,
        cwd=cwd,
        stdio=True,
        signals_reach_worker=False,
        shifted_exit_codes=True,
        kill=kill,
        shown_as=argv[0],
    )


def _docker_kill(docker: str, name: str) -> None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [docker, "kill", name],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_KILL_TIMEOUT_S,
            check=False,
        )


_ENGINES: set[str] = set()


def _engine(docker: str) -> str:
    """The docker CLI's path, once a Docker engine has answered it (else SandboxError)."""
    path = shutil.which(docker)
    if path is None:
        raise SandboxError(f"the docker sandbox needs the docker CLI; {docker!r} is not installed")
    if path in _ENGINES:
        return path
    try:
        done = subprocess.run(
            [path, "info", "--format", "{{.ServerVersion}}"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_INFO_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"the docker sandbox needs a Docker engine: {exc}") from exc
    if done.returncode != 0 or not done.stdout.strip():
        why = " ".join(done.stderr.split())[-300:] or f"docker info exited with {done.returncode}"
        raise SandboxError(f"the docker sandbox needs a running Docker engine; none answers: {why}")
    _ENGINES.add(path)
    return path
