"""The docker sandbox: its command line, its stdio channel, and (where an engine runs) real runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctxfold.errors import SandboxError
from ctxfold.sandbox import ContextSpec, DockerSandbox, ProcessSandbox, make_sandbox
from ctxfold.sandbox._host import WORKER_PATH, WorkerProcess
from ctxfold.sandbox._isolation import Limits
from ctxfold.sandbox.docker import docker_run_argv, stdio_worker

from .attack_helpers import echo_handler


def _engine_runs() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        done = subprocess.run([docker, "info"], capture_output=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


ENGINE = _engine_runs()
needs_engine = pytest.mark.skipif(not ENGINE, reason="no Docker engine runs here")


def test_no_engine_is_a_clear_error() -> None:
    if ENGINE:
        pytest.skip("a Docker engine runs here")
    with pytest.raises(SandboxError, match=r"[Dd]ocker"):
        make_sandbox("docker")
    with pytest.raises(SandboxError, match=r"[Dd]ocker"):
        DockerSandbox(docker="/nonexistent/docker")


def test_run_command_confines_the_container(tmp_path: Path) -> None:
    argv = docker_run_argv(
        "/usr/bin/docker",
        name="ctxfold-test",
        image="python:3.11-slim",
        python="python",
        limits=Limits(memory_mb=1024, max_processes=64),
        scratch=str(tmp_path),
        inputs=["/data/in.txt", "/data/folder"],
        env={"HOME": "/x", "PATH": "/bin", "SECRET_FLAG": "value-not-on-the-command-line"},
    )
    line = " ".join(argv)
    for option in (
        "--network none",
        "--read-only",
        "--memory 1024m",
        "--memory-swap 1024m",
        "--pids-limit 64",
        "--cap-drop ALL",
        "no-new-privileges",
        "--rm",
        "-i",
    ):
        assert option in line
    assert f"source={WORKER_PATH},target=/ctxfold/_worker.py,readonly" in line
    assert "source=/data/in.txt,target=/ctxfold/input/0,readonly" in line
    assert "source=/data/folder,target=/ctxfold/input/1,readonly" in line
    assert f"source={tmp_path},target=/ctxfold/scratch" in line
    assert f"source={tmp_path},target=/ctxfold/scratch,readonly" not in line
    assert "value-not-on-the-command-line" not in line and "-e SECRET_FLAG" in line
    assert argv[-7:-1] == ["python:3.11-slim", "python", "-I", "-u", "/ctxfold/_worker.py", "stdio"]


def test_paths_that_break_mount_syntax_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="cannot mount"):
        docker_run_argv(
            "docker",
            name="n",
            image="i",
            python="python",
            limits=Limits(),
            scratch=str(tmp_path),
            inputs=["/data/a,b"],
            env={},
        )


class _LocalStdioSandbox(ProcessSandbox):
    """The docker backend's stdio channel, with the worker run locally instead of in a container."""

    def _open_worker(self) -> WorkerProcess:
        assert self._scratch is not None
        argv = [sys.executable, "-I", "-u", str(WORKER_PATH), "stdio", Limits().to_worker(None)]
        return stdio_worker(
            argv, env=self._worker_env(), output_limit=self._output_limit, cwd=self._scratch
        )


@pytest.fixture
def stdio_sandbox(context_file: Path) -> Iterator[ProcessSandbox]:
    sandbox = _LocalStdioSandbox(isolate=False)
    spec = ContextSpec(name="context_0", kind="text_file", path=str(context_file), files=[])
    sandbox.start([spec], echo_handler, output_limit=2000)
    yield sandbox
    sandbox.close()


def test_stdio_channel_round_trip(stdio_sandbox: ProcessSandbox) -> None:
    result = stdio_sandbox.execute("print(context[:9], llm_query('hi'))")
    assert result.error is None and result.stdout == "the quick echo:hi\n"


def test_stdio_fd1_is_not_the_channel(stdio_sandbox: ProcessSandbox) -> None:
    result = stdio_sandbox.execute(
        "import os, struct, json\n"
        "data = json.dumps({'op': 'result', 'stdout': 'FORGED'}).encode()\n"
        "os.write(1, struct.pack('>I', len(data)) + data)\n"
        "os.write(2, b'raw')\n"
        "print('real')"
    )
    assert result.stdout == "real\n" and "raw" in result.stderr


def test_stdio_interrupt_and_restart(stdio_sandbox: ProcessSandbox) -> None:
    stdio_sandbox.execute("kept = 1")
    slept = stdio_sandbox.execute("import time\ntime.sleep(100)", timeout=0.5)
    assert slept.timed_out and not slept.restarted
    assert stdio_sandbox.execute("print(kept)").stdout == "1\n"
    died = stdio_sandbox.execute("import os\nos._exit(4)")
    assert died.restarted and died.error is not None and "code 4" in died.error
    assert stdio_sandbox.execute("print(context[:3])").stdout == "the\n"


@needs_engine
def test_docker_sandbox_runs_cells(context_file: Path) -> None:
    sandbox = DockerSandbox()
    spec = ContextSpec(name="context_0", kind="text_file", path=str(context_file), files=[])
    try:
        sandbox.start([spec], echo_handler)
        assert sandbox.isolation == "docker"
        result = sandbox.execute("print(context[:9], llm_query('hi'))")
        assert result.stdout == "the quick echo:hi\n"
        net = sandbox.execute("import socket\nsocket.create_connection(('1.1.1.1', 53), 5)")
        assert net.error is not None
        wrote = sandbox.execute("open('/etc/x', 'w')")
        assert wrote.error is not None
    finally:
        sandbox.close()


@needs_engine
def test_docker_sandbox_restarts() -> None:
    sandbox = DockerSandbox()
    try:
        sandbox.start([], echo_handler)
        assert sandbox.execute("import os\nos._exit(1)").restarted
        assert sandbox.execute("print(1)").stdout == "1\n"
    finally:
        sandbox.close()
