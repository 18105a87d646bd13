"""Fixtures for the attack suite: real sandboxes with default isolation, secrets to steal."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ctxfold.sandbox import ContextSpec, ProcessSandbox

from .attack_helpers import SECRET_KEY, Loot, echo_handler


@pytest.fixture
def loot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Loot:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET_KEY)
    token = secrets.token_hex(16)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_rsa"
    key.write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{token}\n", encoding="utf-8")
    key.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    return Loot(secret_file=key, secret_text=token, home=home)


@pytest.fixture
def context_file(tmp_path: Path) -> Path:
    path = tmp_path / "inputs" / "context_0.txt"
    path.parent.mkdir()
    path.write_text("the quick brown fox", encoding="utf-8")
    return path


@pytest.fixture
def make_sandbox(context_file: Path) -> Iterator[Callable[..., ProcessSandbox]]:
    """Starts ProcessSandboxes (default isolation unless options say otherwise); closes them."""
    started: list[ProcessSandbox] = []

    def factory(**options: Any) -> ProcessSandbox:
        sandbox = ProcessSandbox(**options)
        started.append(sandbox)
        spec = ContextSpec(name="context_0", kind="text_file", path=str(context_file), files=[])
        sandbox.start([spec], echo_handler, output_limit=2000)
        return sandbox

    yield factory
    for sandbox in started:
        sandbox.close()


@pytest.fixture
def sandbox(make_sandbox: Callable[..., ProcessSandbox], loot: Loot) -> ProcessSandbox:
    """A sandbox started after the host's environment got an API key and a private key."""
    return make_sandbox()


@pytest.fixture
def tcp_server() -> Iterator[socket.socket]:
    """A listening TCP socket on the host's 127.0.0.1."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()
