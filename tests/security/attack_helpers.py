"""Helpers shared by the attack suite's tests."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ctxfold
from ctxfold.sandbox import CellResult, SubcallRequest

PROJECT = Path(ctxfold.__file__).resolve().parents[2]  # the source tree ctxfold runs from

SECRET_KEY = "sk-ctxfold-test-" + "A1b2C3d4" * 4  # a fake API key the host holds


def echo_handler(request: SubcallRequest) -> list[str] | dict[str, Any]:
    """Answers sub-calls with an echo (no model)."""
    if request.kind == "budget":
        return {"iterations": 1}
    return [f"echo:{item.prompt}" for item in request.items]


def text(result: CellResult) -> str:
    """Everything a cell showed (output and error)."""
    return f"{result.stdout}\n{result.stderr}\n{result.error or ''}"


def host_pids(marker: bytes) -> list[int]:
    """Host pids whose command line holds ``marker`` (pids inside a sandbox are namespaced)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def wait_until(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def accepted(server: socket.socket) -> bool:
    """Whether anybody connected to ``server``."""
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def shields_host(sandbox: Any) -> bool:
    """Whether signals and ptrace from the worker cannot reach the host: a pid namespace, or a
    worker uid other than the host's (and not root). Attacks that would kill the test run
    itself are skipped where this is False."""
    if sandbox.isolation.startswith("bwrap"):
        return True
    uid = sandbox.execute("import os\nprint(os.geteuid())").stdout.strip()
    return uid.isdigit() and int(uid) not in (0, os.geteuid())


def host_pids_with_env(token: str) -> list[int]:
    """Host pids whose environment holds ``token`` (marks every process of one sandbox)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token.encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def code(src: str) -> str:
    """A root-model reply holding one code block."""
    return f"Running this.\n```python\n{src}\n```"


@dataclass
class Loot:
    """Things on the host the sandbox must not reach."""

    secret_file: Path  # a private key outside the scratch dir
    secret_text: str
    home: Path  # a fake $HOME of the host with ~/.ssh/id_rsa
