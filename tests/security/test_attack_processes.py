"""Cells that attack with processes, signals, memory, CPU and output volume.

In every case the host (this pytest process) must survive, and the sandbox must go on: the next
cell runs (in the same worker, or in a fresh one after a restart).
"""

from __future__ import annotations

import os
import resource
import secrets
from collections.abc import Callable

import pytest

from ctxfold.sandbox import ProcessSandbox

from .attack_helpers import alive, host_pids, host_pids_with_env, shields_host, text, wait_until


def _still_works(sandbox: ProcessSandbox) -> None:
    result = sandbox.execute("print(context[:9])", timeout=60)
    assert result.error is None, result.error
    assert result.stdout == "the quick\n"


def _marked(make_sandbox: Callable[..., ProcessSandbox]) -> tuple[ProcessSandbox, str]:
    """A sandbox whose every process carries a mark in its environment."""
    token = f"ctxfold-mark-{secrets.token_hex(8)}"
    return make_sandbox(env={"CTXFOLD_TEST_MARK": token}), token


# ---- fork and thread bombs ----


@pytest.mark.parametrize(
    "cell",
    [
        "import os\nwhile True:\n    os.fork()",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    ],
    ids=["naive", "persistent"],
)
def test_fork_bomb_is_bounded(make_sandbox: Callable[..., ProcessSandbox], cell: str) -> None:
    sandbox, token = _marked(make_sandbox)
    result = sandbox.execute(cell, timeout=3)
    assert result.error is not None
    assert len(host_pids_with_env(token)) <= 256 + 8  # max_processes, plus bubblewrap's own
    _still_works(sandbox)
    sandbox.close()
    assert wait_until(lambda: not host_pids_with_env(token)), "fork bomb survived close()"


def test_thread_bomb_is_bounded(sandbox: ProcessSandbox) -> None:
    result = sandbox.execute(
        "import threading, time\n"
        "for _ in range(100_000):\n"
        "    threading.Thread(target=time.sleep, args=(2,), daemon=True).start()",
        timeout=30,
    )
    assert result.error is not None and "can't start new thread" in result.error
    _still_works(sandbox)


def test_file_descriptor_bomb_is_bounded(sandbox: ProcessSandbox) -> None:
    result = sandbox.execute("files = []\nwhile True:\n    files.append(open('/dev/null'))")
    assert result.error is not None and "Too many open files" in result.error
    assert sandbox.execute("files.clear()\nprint('ok')").stdout == "ok\n"


# ---- memory and CPU ----


@pytest.mark.parametrize(
    "cell",
    ["x = bytearray(50 * 2**30)", "x = b'a' * (50 * 2**30)", "import numpy\nnumpy.ones(7 * 2**30)"],
)
def test_memory_bomb_raises_memory_error(sandbox: ProcessSandbox, cell: str) -> None:
    sandbox.execute("kept = 'yes'")
    result = sandbox.execute(cell, timeout=60)
    assert result.error is not None
    assert "MemoryError" in result.error or result.restarted
    _still_works(sandbox)


def test_memory_creep_stops_at_memory_mb(make_sandbox: Callable[..., ProcessSandbox]) -> None:
    sandbox = make_sandbox(memory_mb=512)
    sandbox.execute("kept = 'yes'")
    result = sandbox.execute(
        "chunks = []\nwhile True:\n    chunks.append(bytearray(32 * 2**20))", timeout=60
    )
    assert result.error is not None and "MemoryError" in result.error
    assert not result.restarted
    assert sandbox.execute("chunks.clear()\nprint(kept)").stdout == "yes\n"


def test_cpu_seconds_limit_ends_the_worker(make_sandbox: Callable[..., ProcessSandbox]) -> None:
    sandbox = make_sandbox(cpu_seconds=1)
    result = sandbox.execute("while True:\n    pass", timeout=60)
    assert result.restarted and not result.timed_out
    assert result.error is not None and "SIGXCPU" in result.error
    _still_works(sandbox)


# ---- time ----

_IGNORE_SIGINT = (
    "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
)
_SWALLOW = (
    "while True:\n    try:\n        while True:\n            pass\n"
    "    except BaseException:\n        pass"
)


@pytest.mark.parametrize(
    ("cell", "restarts"),
    [
        ("while True:\n    pass", False),
        ("import time\ntime.sleep(1000)", False),
        (_IGNORE_SIGINT, True),
        (_SWALLOW, True),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)", True),
    ],
    ids=["busy-loop", "sleep", "ignore-sigint", "swallow-interrupt", "sigstop-self"],
)
def test_runaway_cells_end_at_the_time_limit(
    sandbox: ProcessSandbox, cell: str, restarts: bool
) -> None:
    result = sandbox.execute(cell, timeout=0.5)
    assert result.timed_out
    assert result.restarted is restarts
    _still_works(sandbox)


# ---- output volume ----


@pytest.mark.parametrize(
    "cell",
    [
        "chunk = 'x' * 2**20\nfor _ in range(1024):\n    print(chunk)",
        "import os\nchunk = b'y' * 2**20\nfor _ in range(512):\n    os.write(1, chunk)",
        "import sys\nfor _ in range(512):\n    sys.stderr.buffer.write(b'z' * 2**20)",
    ],
    ids=["print-1GiB", "fd1-512MiB", "stderr-buffer-512MiB"],
)
def test_printing_gigabytes_is_bounded(sandbox: ProcessSandbox, cell: str) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = sandbox.execute(cell, timeout=120)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert result.error is None, result.error
    assert len(result.stdout) + len(result.stderr) < 10_000
    assert "cut" in result.stdout + result.stderr
    assert grown_mb < 200  # the host kept a bounded buffer, not the gigabyte


# ---- exits and signals ----


@pytest.mark.parametrize(
    ("cell", "restarts"),
    [
        ("import os\nos._exit(0)", True),
        ("import sys\nsys.exit(3)", False),
        ("raise SystemExit", False),
        ("raise KeyboardInterrupt", False),
        ("import os\nos.kill(os.getpid(), 9)", True),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", True),
        ("import os, signal\nos.killpg(0, signal.SIGKILL)", True),
        ("import os\nos.kill(-1, 9)", None),
    ],
    ids=[
        "os-exit",
        "sys-exit",
        "systemexit",
        "keyboardinterrupt",
        "kill-self",
        "segv-self",
        "kill-own-group",
        "kill-all",
    ],
)
def test_self_destruction_is_survived(
    sandbox: ProcessSandbox, cell: str, restarts: bool | None
) -> None:
    if "-1" in cell and not shields_host(sandbox):
        pytest.skip("kill(-1) from this worker would reach the test run itself")
    result = sandbox.execute(cell, timeout=30)
    assert result.error is not None
    if restarts is not None:
        assert result.restarted is restarts
    _still_works(sandbox)


@pytest.mark.parametrize("target", ["os.getppid()", "HOST", "-HOST"])
def test_killing_the_parent_or_host_fails(sandbox: ProcessSandbox, target: str) -> None:
    if not shields_host(sandbox):
        pytest.skip("this worker may signal the host: the attack would end the test run")
    host = os.getpid()
    pid = target.replace("HOST", str(host))
    result = sandbox.execute(
        f"import os\nos.kill({pid}, 9)" if target != "-HOST" else f"import os\nos.killpg({host}, 9)"
    )
    assert alive(host)
    assert result.error is not None, text(result)
    _still_works(sandbox)


@pytest.mark.parametrize("target", ["os.getppid()", "HOST"])
def test_ptrace_on_the_parent_or_host_fails(sandbox: ProcessSandbox, target: str) -> None:
    if not shields_host(sandbox):
        pytest.skip("this worker may trace the host: the attack would stop the test run")
    pid = target.replace("HOST", str(os.getpid()))
    result = sandbox.execute(
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"rc = libc.ptrace(16, {pid}, 0, 0)\n"  # PTRACE_ATTACH
        "print(rc, ctypes.get_errno())"
    )
    assert result.error is None, result.error
    rc, errno = result.stdout.split()
    assert rc == "-1" and errno in ("1", "3")  # EPERM or ESRCH
    assert alive(os.getpid())


# ---- processes that try to outlive the sandbox ----


@pytest.mark.parametrize(
    "how",
    [
        "subprocess.Popen(['sleep', SECONDS], start_new_session=True)",
        "subprocess.Popen(['setsid', '--fork', 'sleep', SECONDS])",
        "subprocess.Popen(['sh', '-c', f'nohup sleep {SECONDS} >/dev/null 2>&1 &'])",
    ],
    ids=["new-session", "setsid-fork", "nohup-background"],
)
def test_detached_processes_die_with_the_sandbox(
    make_sandbox: Callable[..., ProcessSandbox], how: str
) -> None:
    sandbox = make_sandbox()
    seconds = f"1000.{secrets.randbelow(10**8)}"
    cell = f"import subprocess\nSECONDS = {seconds!r}\n{how}\nimport time\ntime.sleep(0.3)"
    assert sandbox.execute(cell).error is None
    marker = b"sleep\0" + seconds.encode()
    assert wait_until(lambda: bool(host_pids(marker)))
    sandbox.close()
    if not sandbox.isolation.startswith("bwrap") and os.geteuid() != 0:
        pytest.skip("without a pid namespace a non-root host cannot find processes that left")
    assert wait_until(lambda: not host_pids(marker)), "a detached process outlived close()"


def test_double_forked_daemon_dies_with_the_sandbox(
    make_sandbox: Callable[..., ProcessSandbox],
) -> None:
    sandbox, token = _marked(make_sandbox)
    cell = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(1000)\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)"
    )
    assert sandbox.execute(cell).error is None
    assert len(host_pids_with_env(token)) >= 2
    sandbox.close()
    assert wait_until(lambda: not host_pids_with_env(token))
