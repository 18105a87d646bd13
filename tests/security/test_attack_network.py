"""Cells that try to reach the network: the host's loopback, the internet, DNS, local sockets."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctxfold.sandbox import ProcessSandbox

from .attack_helpers import accepted, text


@pytest.fixture(autouse=True)
def _needs_netns(sandbox: ProcessSandbox) -> None:
    if sandbox.isolation not in ("bwrap+netns+rlimits", "unshare-net+rlimits"):
        pytest.skip(f"no network namespace at isolation {sandbox.isolation!r}")


def test_host_loopback_port_is_unreachable(
    sandbox: ProcessSandbox, tcp_server: socket.socket
) -> None:
    port = tcp_server.getsockname()[1]
    result = sandbox.execute(
        f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=10)",
        timeout=30,
    )
    assert result.error is not None and "ConnectionRefusedError" in result.error
    assert not accepted(tcp_server)


@pytest.mark.parametrize(
    "cell",
    [
        "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=30)",
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.sendto(b'x', ('8.8.8.8', 53))",
        "import socket\nsocket.create_connection(('2606:4700:4700::1111', 53), timeout=30)",
    ],
    ids=["tcp-1.1.1.1", "udp-8.8.8.8", "tcp-ipv6"],
)
def test_outside_addresses_fail_fast(sandbox: ProcessSandbox, cell: str) -> None:
    result = sandbox.execute(cell, timeout=60)
    assert not result.timed_out  # it failed at once, it did not hang until the limit
    assert result.error is not None and ("unreachable" in result.error or "OSError" in result.error)


def test_dns_lookup_fails(sandbox: ProcessSandbox) -> None:
    result = sandbox.execute(
        "import socket\nprint(socket.getaddrinfo('example.com', 443))", timeout=60
    )
    assert not result.timed_out
    assert result.error is not None and "gaierror" in result.error


def test_only_loopback_interface(sandbox: ProcessSandbox) -> None:
    result = sandbox.execute("import socket\nprint([name for _, name in socket.if_nameindex()])")
    assert result.error is None and result.stdout == "['lo']\n"


@pytest.fixture
def abstract_listener() -> Iterator[str]:
    name = f"\0ctxfold-test-{secrets.token_hex(6)}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(name)
    server.listen(1)
    yield name
    server.close()


def test_host_abstract_unix_socket_is_unreachable(
    sandbox: ProcessSandbox, abstract_listener: str
) -> None:
    result = sandbox.execute(
        f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({abstract_listener!r})"
    )
    assert result.error is not None and "ConnectionRefusedError" in result.error


def test_host_unix_socket_file_is_unreachable(sandbox: ProcessSandbox, tmp_path: Path) -> None:
    path = tmp_path / "host.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    try:
        result = sandbox.execute(
            f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({str(path)!r})"
        )
        if sandbox.isolation.startswith("bwrap"):
            assert result.error is not None, text(result)
    finally:
        server.close()


def test_raw_sockets_are_refused(sandbox: ProcessSandbox) -> None:
    result = sandbox.execute(
        "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)"
    )
    if sandbox.isolation.startswith("bwrap"):
        assert result.error is not None and "PermissionError" in result.error
