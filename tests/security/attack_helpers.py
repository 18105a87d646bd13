"""Helpers shared by the attack suite's tests."""

from __future__ import annotations

import contextlib
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


# Cell code that finds the worker object behind llm_query's closures: `_find_worker()`.
FIND_WORKER = """
def _find_worker(fn=llm_query):
    for cell in fn.__closure__ or ():
        value = cell.cell_contents
        if type(value).__name__ == "_Worker":
            return value
        if callable(value) and getattr(value, "__closure__", None):
            found = _find_worker(value)
            if found is not None:
                return found
    return None
"""

# Cell code that writes one forged frame of ``{count}`` tiny call items to the channel.
FORGE_CALL_FRAME = """
import os, struct
pipes = []
for fd in map(int, os.listdir('/proc/self/fd')):
    try:
        if fd > 2 and os.readlink(f'/proc/self/fd/{{fd}}').startswith('pipe:'):
            pipes.append(fd)
    except OSError:
        pass
body = (b'{{"op":"call","id":99,"kind":"llm","items":['
        + b','.join([b'{{"prompt":""}}'] * {count}) + b']}}')
for fd in pipes:
    try:
        os.write(fd, struct.pack('>I', len(body)) + body)
    except OSError:
        pass
import time; time.sleep(2)
print('sent', len(body))
"""

# The start of a child process's source: ``run(cells, sub_model, **budget)`` runs an RLM whose
# scripted root model sends ``cells`` one per turn, then answers, and prints how it stopped.
SCRIPTED_RUN = """
import ctxfold
from ctxfold import Budget
from ctxfold.models import ScriptedModel
def code(src):
    return "Running.\\n```python\\n" + src + "\\n```"
def run(cells, sub_model, **budget):
    done = code("answer['content'] = 'x'; answer['ready'] = True")
    root = ScriptedModel([code(c) for c in cells] + [done] * 2)
    with ctxfold.RLM(root, sub_model, budget=Budget(iterations=len(cells) + 2, **budget),
                     prompt_profile="concise") as rlm:
        result = rlm.run("q", "some input")
    print("stop:", result.stop_reason, "sub_calls:", result.usage.sub_calls, flush=True)
"""


@dataclass
class Watched:
    """How a child process that ran an attack ended."""

    returncode: int | None  # None: killed by the watcher
    output: str
    peak_mb: float  # the child's peak resident memory


def run_watched(source: str, *, cap_mb: float, seconds: float) -> Watched:
    """Run Python ``source`` in a child process, killing it past ``cap_mb`` of resident memory
    or ``seconds``: memory and crash attacks run there, so they cannot hurt the test run."""
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c", source],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    peak, killed = 0.0, False
    deadline = time.monotonic() + seconds
    while child.poll() is None:
        rss, hwm = _memory_mb(child.pid)
        peak = max(peak, rss, hwm)
        if rss > cap_mb or time.monotonic() > deadline:
            child.kill()
            killed = True
            break
        time.sleep(0.02)
    output, _ = child.communicate()
    return Watched(None if killed else child.returncode, output, peak)


def _memory_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of ``pid`` in MB."""
    found = {"VmRSS": 0.0, "VmHWM": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in found:
                found[key] = int(rest.split()[0]) / 1024
    except (OSError, ValueError):
        pass
    return found["VmRSS"], found["VmHWM"]


class RawServer:
    """A TCP server on 127.0.0.1 that reads each HTTP request and answers with ``reply`` bytes
    as they are (``None``: never answers, holding the connection). ``requests`` counts them."""

    def __init__(self, reply: bytes | None) -> None:
        import threading

        self._reply = reply
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.requests = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                while len(body) < length:
                    body += conn.recv(65536)
            except (OSError, StopIteration, ValueError):
                conn.close()
                continue
            self.requests += 1
            if self._reply is None:
                self._held.append(conn)
                continue
            with contextlib.suppress(OSError):
                conn.sendall(self._reply)
            conn.close()

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
        for conn in self._held:
            conn.close()


def gzip_bomb(inflated_mib: int) -> bytes:
    """A gzip body that inflates to ``inflated_mib`` MiB of spaces (built without holding it)."""
    import zlib

    deflate = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = b" " * 2**20
    return b"".join([deflate.compress(chunk) for _ in range(inflated_mib)] + [deflate.flush()])


def http_reply(body: bytes, *headers: str) -> bytes:
    """A whole HTTP/1.1 200 answer with ``body`` and extra header lines."""
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", *headers]
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body
