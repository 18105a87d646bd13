"""Shared fixtures. No test may reach a hosted model: API keys are removed from the environment."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

_SECRETS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL")


@pytest.fixture(autouse=True)
def _no_hosted_models(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _SECRETS:
        monkeypatch.delenv(name, raising=False)


def child_pids() -> set[int]:
    """PIDs of this process's live children (to check no worker outlives a run)."""
    out = subprocess.run(
        ["ps", "-o", "pid=,stat=", "--ppid", str(os.getpid())], capture_output=True, text=True
    ).stdout
    pids = set()
    for line in out.split("\n"):
        parts = line.split()
        if len(parts) == 2 and not parts[1].startswith("Z") and int(parts[0]) != os.getpid():
            pids.add(int(parts[0]))
    return pids


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
