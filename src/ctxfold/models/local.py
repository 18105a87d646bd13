"""The embedded local model: llama.cpp (through ``xllamacpp``) serving a GGUF file on loopback.

``load_local_model("local")`` assembles and verifies the default weights (see
:mod:`ctxfold.models._weights`), starts llama.cpp's OpenAI-compatible server in a child process
bound to ``127.0.0.1`` on a free port, and returns a :class:`LocalModel` that talks to it through
:class:`~ctxfold.models.openai_compat.OpenAIModel`.

Why a child process: constructing ``xllamacpp.Server`` loads the model while holding the GIL
(measured: a Python thread got no time for the whole ~3 s load), and a crash inside llama.cpp
would take the host down with it. Serving itself runs in llama.cpp's own threads.

The server is shared: every model loaded from the same file in one process uses one server
(reference counted; the last :meth:`LocalModel.close` stops it, and any still running at exit are
stopped by ``atexit``; the child also exits on its own when its parent dies). Requests run in
``parallel`` slots with continuous batching; each slot has its own KV cache of ``window`` tokens
(the model's full 32K for the default model: about 2.1 GB in all with 4 slots). Separate caches,
not one unified cache, because a unified cache that fills up fails every request in flight with
HTTP 500, while a per-slot cache rejects only an over-long prompt, at once, with HTTP 400, and a
generation that reaches the slot's end stops with ``finish_reason="length"``. More requests than
slots wait in the server's queue.

Set ``CTXFOLD_DEBUG`` to see llama.cpp's log on stderr; otherwise it is silenced.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import queue
import re
import secrets
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ctxfold.closing import Closing
from ctxfold.errors import CtxfoldError, LocalModelError, ModelError, ModelSpecError
from ctxfold.models._base import Completion, Message
from ctxfold.models._weights import (
    DEFAULT_LOCAL_MODEL,
    ensure_weights,
    get_local_weights,
    list_local_models,
)
from ctxfold.models.openai_compat import OpenAIModel

__all__ = [
    "DEFAULT_OPTIONS",
    "DEFAULT_PARALLEL",
    "LocalModel",
    "ensure_weights",
    "list_local_models",
    "load_local_model",
]

DEFAULT_PARALLEL = 4
"""Decoding slots per server: how many requests are decoded together (continuous batching)."""

DEFAULT_OPTIONS: dict[str, Any] = {"temperature": 0.0, "max_tokens": 1024}
"""Call options a :class:`LocalModel` uses unless a call overrides them: greedy, bounded output."""

_GGUF_MAGIC = b"GGUF"
_FILE_SLOT_WINDOW = 16384  # per slot for an arbitrary GGUF file (llama.cpp caps it at training)
_CACHE_RAM_MIB = 1024  # host-RAM prompt cache for idle slots (llama.cpp's default is 8 GiB)
_START_TIMEOUT = 300.0
_STOP_TIMEOUT = 10.0
_REQUEST_TIMEOUT = 1800.0  # a 32K-token prompt takes minutes on 2 cores
_INSTALL_HINT = "pip install 'ctxfold[local]'"
_LOG_PREFIX = re.compile(r"^[\d.]+ [A-Z] ")  # llama.cpp's "0.00.004.202 E " timestamp and level

# Runs in the child: reads its settings (one JSON line) from stdin, starts the server, reports
# {"address", "n_ctx", "slots"} (or {"error"}) as one JSON line on stdout, then serves until its
# stdin closes (the parent closed it, or died).
_CHILD_SCRIPT = r"""
import json, signal, sys, urllib.request
signal.signal(signal.SIGINT, signal.SIG_IGN)
cfg = json.loads(sys.stdin.readline())
def optional(obj, name, value):  # settings some xllamacpp versions lack
    if hasattr(obj, name):
        setattr(obj, name, value)
def report(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()
try:
    import xllamacpp
    p = xllamacpp.CommonParams()
    p.model.path = cfg["model_path"]
    p.model_alias = {cfg["alias"]}
    p.n_ctx = cfg["n_ctx"]
    p.n_parallel = cfg["n_parallel"]
    p.kv_unified = False
    p.cont_batching = True
    p.cache_prompt = True
    optional(p, "cache_ram_mib", cfg["cache_ram_mib"])
    p.cpuparams.n_threads = cfg["n_threads"]
    p.cpuparams_batch.n_threads = cfg["n_threads"]
    p.sampling.temp = 0.0
    p.hostnames = ["127.0.0.1"]
    p.port = 0
    p.api_keys = [cfg["api_key"]]
    optional(p, "endpoint_slots", False)
    optional(p, "ui", False)
    p.verbosity = cfg["verbosity"]
    server = xllamacpp.Server(p)
    address = server.listening_address
    request = urllib.request.Request(
        address + "/props", headers={"Authorization": "Bearer " + cfg["api_key"]}
    )
    props = json.loads(urllib.request.urlopen(request, timeout=30).read())
    report(
        address=address,
        n_ctx=props["default_generation_settings"]["n_ctx"],
        slots=props.get("total_slots", cfg["n_parallel"]),
    )
except BaseException as exc:
    report(error=f"{type(exc).__name__}: {exc}")
    sys.exit(1)
sys.stdin.read()
del server
"""


@dataclass(frozen=True, slots=True)
class _ServerKey:
    model_path: str
    n_ctx: int
    n_parallel: int


class _ServerProcess:
    """One running llama.cpp server child, shared by reference count."""

    def __init__(self, key: _ServerKey, alias: str) -> None:
        self.key = key
        self.alias = alias
        self.api_key = secrets.token_hex(16)
        self.refs = 0
        self.owner_pid = os.getpid()
        self.base_url = ""
        self.context_window = 0
        self.slots = 0
        self._log: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Launch the child and wait until it serves; :class:`LocalModelError` if it cannot."""
        debug = _debug_enabled()
        self._log = None if debug else tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        config = {
            "model_path": self.key.model_path,
            "alias": self.alias,
            "n_ctx": self.key.n_ctx,
            "n_parallel": self.key.n_parallel,
            "n_threads": _cpu_count(),
            "cache_ram_mib": _CACHE_RAM_MIB,
            "api_key": self.api_key,
            "verbosity": 3 if debug else 1,
        }
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_SCRIPT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
            )
            message = self._handshake(json.dumps(config).encode() + b"\n")
        except BaseException:  # e.g. Ctrl-C while the model loads: leave no child behind
            self.stop()
            raise
        if "address" not in message:
            reason = "; ".join(filter(None, [message.get("error"), self._failure_reason()]))
            self.stop()
            raise LocalModelError(
                f"the local model server did not start for {self.key.model_path}: {reason}"
            )
        self.base_url = str(message["address"]).rstrip("/") + "/v1"
        self.context_window = int(message["n_ctx"])
        self.slots = int(message["slots"])

    def _handshake(self, config: bytes) -> dict[str, Any]:
        """Send the settings, then wait for the child's one-line JSON report."""
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(config)
            self._proc.stdin.flush()
        except OSError:  # the child died at once; _failure_reason tells why
            return {}
        ready = _read_line(self._proc, _START_TIMEOUT)
        try:
            message = json.loads(ready) if ready else {}
        except ValueError:
            return {"error": f"unexpected output {ready[:200]!r}"}
        return message if isinstance(message, dict) else {}

    def _failure_reason(self) -> str:
        """What the child's exit code and the last lines of its log say, in one line."""
        if self._proc is None:
            return "not started"
        try:
            code = self._proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"no answer within {_START_TIMEOUT:.0f} s"
        tail = ""
        if self._log is not None:
            self._log.seek(0)
            lines = self._log.read().decode(errors="replace").strip().splitlines()
            tail = " | ".join(_LOG_PREFIX.sub("", line).strip() for line in lines[-4:])
        return f"exit code {code}" + (f"; log: {tail}" if tail else "")

    @property
    def alive(self) -> bool:
        """True while the child runs."""
        return self._proc is not None and self._proc.poll() is None

    def explain(self, exc: ModelError) -> CtxfoldError:
        """``exc``, or a :class:`LocalModelError` saying the server died if it did."""
        code = self._proc.poll() if self._proc is not None else None
        if code is None:
            return exc
        return LocalModelError(
            f"the local model server for {self.key.model_path} exited with code {code}; "
            "load the model again (set CTXFOLD_DEBUG=1 to see its log)"
        )

    def stop(self) -> None:
        """Stop the child (close its stdin, then terminate/kill if it lingers). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and os.getpid() == self.owner_pid:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None


_SERVERS: dict[_ServerKey, _ServerProcess] = {}
_SERVERS_LOCK = threading.Lock()


def _acquire_server(key: _ServerKey, alias: str) -> _ServerProcess:
    with _SERVERS_LOCK:
        server = _SERVERS.get(key)
        if server is None or server.owner_pid != os.getpid() or not server.alive:
            server = _ServerProcess(key, alias)
            server.start()
            _SERVERS[key] = server
        server.refs += 1
        return server


def _release_server(server: _ServerProcess) -> None:
    with _SERVERS_LOCK:
        server.refs -= 1
        if server.refs > 0:
            return
        if _SERVERS.get(server.key) is server:
            del _SERVERS[server.key]
    server.stop()


@atexit.register
def _stop_all_servers() -> None:
    with _SERVERS_LOCK:
        servers = list(_SERVERS.values())
        _SERVERS.clear()
    for server in servers:
        server.stop()


class LocalModel(Closing):
    """A :class:`~ctxfold.models.Model` answered by the embedded llama.cpp server.

    Build it with :func:`load_local_model`. Calls go to an OpenAI-compatible endpoint on loopback;
    concurrent calls (threads or ``asyncio``) are decoded together in the server's slots.
    ``context_window`` is the window of one slot (the model's full window for known models).
    Call :meth:`close` (or use ``with``) when done; the server stops when its last user closes.
    """

    priced = True  # it runs here: its calls cost nothing

    def __init__(self, name: str, path: Path, server: _ServerProcess) -> None:
        self.name = name
        self.path = path
        self.context_window: int | None = server.context_window
        self.parallel = server.slots
        self._server: _ServerProcess | None = server
        self._client = OpenAIModel(
            name,
            base_url=server.base_url,
            api_key=server.api_key,
            context_window=server.context_window,
            timeout=_REQUEST_TIMEOUT,
            price_per_mtok=(0.0, 0.0),
            default_options=dict(DEFAULT_OPTIONS),
            grammar_choices=True,  # llama.cpp takes a GBNF grammar: the reply is a choice
        )

    @property
    def base_url(self) -> str:
        """The server's OpenAI-compatible base URL (``http://127.0.0.1:PORT/v1``)."""
        return self._live_server().base_url

    def complete(self, messages: Sequence[Message], **options: Any) -> Completion:
        """One chat completion; ``options`` as in :class:`~ctxfold.models.Model`.

        Raises :class:`~ctxfold.errors.ModelError` when the call fails, or
        :class:`~ctxfold.errors.LocalModelError` when the model is closed or its server died.
        """
        server = self._live_server()
        try:
            return self._client.complete(messages, **options)
        except ModelError as exc:
            raise server.explain(exc) from exc

    async def acomplete(self, messages: Sequence[Message], **options: Any) -> Completion:
        """The async form of :meth:`complete`."""
        server = self._live_server()
        try:
            return await self._client.acomplete(messages, **options)
        except ModelError as exc:
            raise server.explain(exc) from exc

    def close(self) -> None:
        """Release this model; the server stops when no other model uses it. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        try:
            self._client.close()
        finally:
            _release_server(server)

    async def aclose(self) -> None:
        """Like :meth:`close`, also awaiting the running loop's HTTP client."""
        if self._server is not None:
            await self._client.aclose()
        self.close()

    def __repr__(self) -> str:
        return f"LocalModel({self.name!r}, path={str(self.path)!r}, parallel={self.parallel})"

    def _live_server(self) -> _ServerProcess:
        if self._server is None:
            raise LocalModelError(f"local model {self.name!r} is closed")
        return self._server


def load_local_model(
    spec: str = "local", *, parallel: int = DEFAULT_PARALLEL, window: int | None = None
) -> LocalModel:
    """Start (or reuse) the embedded server for ``spec`` and return a model that calls it.

    ``spec`` is ``"local"`` (the default model), ``"local:NAME"`` for a known model (see
    :func:`~ctxfold.models._weights.list_local_models`), or ``"local:/path/to/model.gguf"`` for
    any GGUF file (loaded without a checksum); any of these may end in ``?window=TOKENS`` and/or
    ``&parallel=SLOTS`` (e.g. ``"local?window=8192"``), which take the place of the arguments.
    ``parallel`` is the number of decoding slots and
    ``window`` the context of each, in tokens (default: 32768 for the default model, 16384 for
    the 1.5B and for GGUF files; llama.cpp caps it at the model's training window). The KV memory
    grows with ``parallel * window``. Loads with the same file and settings share one server.
    The first load of a known model assembles and verifies its weights (a few seconds); starting
    the server takes about 3-5 s for the default model.

    Raises :class:`ModelSpecError` for a spec it cannot parse or an unknown name, and
    :class:`LocalModelError` when the weights or ``xllamacpp`` are not installed, the weights fail
    their checksum, or the server does not start.
    """
    spec, settings = _split_settings(spec)
    parallel = settings.get("parallel", parallel)
    window = settings.get("window", window)
    if parallel < 1:
        raise ModelSpecError(f"parallel must be at least 1, not {parallel}")
    if window is not None and window < 256:
        raise ModelSpecError(f"window must be at least 256 tokens, not {window}")
    name, path, default_window = _resolve(spec)
    _require_xllamacpp()
    key = _ServerKey(str(path), parallel * (window or default_window), parallel)
    server = _acquire_server(key, name)
    try:
        return LocalModel(name, path, server)
    except BaseException:
        _release_server(server)
        raise


def _split_settings(spec: str) -> tuple[str, dict[str, int]]:
    """``"local:NAME?window=8192&parallel=2"`` → ``("local:NAME", {"window": 8192, ...})``."""
    head, sep, query = spec.partition("?")
    if not sep:
        return spec, {}
    settings: dict[str, int] = {}
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if key not in ("window", "parallel") or not eq:
            raise ModelSpecError(
                f"bad setting {item!r} in {spec!r}: use ?window=TOKENS and/or &parallel=SLOTS"
            )
        try:
            settings[key] = int(value.strip().replace("_", ""))
        except ValueError:
            raise ModelSpecError(f"{key} must be an integer in {spec!r}, not {value!r}") from None
    return head, settings


def _resolve(spec: str) -> tuple[str, Path, int]:
    """``(model name, weights path, default window per slot)`` for a spec."""
    head, sep, rest = spec.strip().partition(":")
    if head.strip().lower() != "local":
        raise ModelSpecError(f"not a local model spec: {spec!r} (expected 'local' or 'local:...')")
    if sep and not rest.strip():
        raise ModelSpecError(f"empty local model name in {spec!r}")
    target = rest.strip() or DEFAULT_LOCAL_MODEL
    if _looks_like_path(target):
        path = _check_gguf(Path(target).expanduser())
        return f"local:{path.name}", path, _FILE_SLOT_WINDOW
    weights = get_local_weights(target)
    path = ensure_weights(weights.name)
    return f"local:{weights.name}", path, weights.slot_window or weights.context_window


def _looks_like_path(target: str) -> bool:
    return "/" in target or os.sep in target or target.lower().endswith(".gguf")


def _check_gguf(path: Path) -> Path:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise LocalModelError(f"GGUF file not found: {path}") from None
    except OSError as exc:
        raise LocalModelError(f"cannot read GGUF file {path}: {exc}") from exc
    if magic != _GGUF_MAGIC:
        raise LocalModelError(f"not a GGUF file (bad magic {magic!r}): {path}")
    return path.resolve()


def _require_xllamacpp() -> None:
    if importlib.util.find_spec("xllamacpp") is None:
        raise LocalModelError(
            f"the local model needs the 'xllamacpp' package; install it with: {_INSTALL_HINT}"
        )


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The child's first stdout line, or ``""`` if it closed stdout or gave none within timeout."""
    lines: queue.Queue[bytes] = queue.Queue(maxsize=1)

    def reader() -> None:
        assert proc.stdout is not None
        lines.put(proc.stdout.readline())

    threading.Thread(target=reader, name="ctxfold-llama-start", daemon=True).start()
    try:
        return lines.get(timeout=timeout).decode(errors="replace").strip()
    except queue.Empty:
        return ""


def _cpu_count() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _debug_enabled() -> bool:
    return os.environ.get("CTXFOLD_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
