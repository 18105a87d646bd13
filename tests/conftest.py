"""Shared fixtures. No test may reach a hosted model: API keys are removed from the environment."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

_SECRETS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL")


def _become_subreaper() -> None:
    """Orphans of processes the tests start (e.g. a killed CLI's worker) become our children,
    so orphan checks look only at this test run's processes, whatever else the machine runs."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


_become_subreaper()


def _take_ctrl_c_back() -> None:
    """A shell starts a background job (``make test &``, a runner's script) with SIGINT ignored,
    and every process the tests start inherits that: a CLI the tests press Ctrl-C on would not
    hear it. The test run takes Python's own handler back, as a job in a terminal has it."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_take_ctrl_c_back()


def worker_children() -> set[int]:
    """Live sandbox worker processes among this test run's descendants (and adopted orphans)."""
    return {pid for pid in child_pids() if _is_python_worker(pid)}


@pytest.fixture(autouse=True)
def _no_hosted_models(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _SECRETS:
        monkeypatch.delenv(name, raising=False)


def child_pids() -> set[int]:
    """PIDs of this process's live descendants (to check no worker outlives a run)."""
    out = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid=,stat="], capture_output=True, text=True, check=False
    ).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and not parts[2].startswith("Z"):
            children.setdefault(int(parts[1]), []).append(int(parts[0]))
    found: set[int] = set()
    todo = [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), []):
            if pid not in found:
                found.add(pid)
                todo.append(pid)
    return found


@pytest.fixture
def no_orphans() -> Iterator[None]:
    """Fails the test if it leaves a child process running."""
    before = child_pids()
    yield
    leftover = child_pids() - before
    leftover.discard(os.getpid())
    assert not {p for p in leftover if _is_python_worker(p)}, f"orphan processes: {leftover}"


def _is_python_worker(pid: int) -> bool:
    try:
        with Path(f"/proc/{pid}/cmdline").open("rb") as fh:
            return b"_worker.py" in fh.read()
    except OSError:
        return False
