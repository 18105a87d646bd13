"""The sandbox worker: runs model-written code cells in one persistent namespace.

This file is a self-contained program (standard library only; it never imports ctxfold). The host
starts it as ``python -I -u _worker.py READ_FD WRITE_FD [LIMITS]``. The two fds carry the message
channel: each message is a 4-byte big-endian length followed by UTF-8 JSON. fds 1 and 2 are a plain
pipe the host drains, so nothing model code writes there can pass for a channel message. In
``stdio`` mode (``_worker.py stdio [LIMITS]``, for containers, where extra fds do not cross) the
channel comes in on fd 0 and goes out on fd 1: both are moved aside at once and fd 1 is pointed at
fd 2 (the drained stream) before any model code runs.

``LIMITS`` (JSON) are the resource limits the worker sets on itself at start-up, the ``uid`` a
worker started as root drops to after loading its inputs (see ``sandbox/_isolation.py``), and
``seccomp``, a system-call filter it loads on itself where no wrapper did (``_seccomp.py``).

The worker says ``started`` once it is set up, then waits for ``init`` (a spare worker waits there
until a sandbox adopts it, see ``sandbox/_spare.py``), answers ``ready``, and serves cells.

Threads: a reader thread owns the channel's read side. ``reply`` messages complete pending
sub-calls (so threads in model code may call ``llm_query`` at once); ``exec`` and ``shutdown`` go
to a queue served by the main thread, where cells run (so the host's SIGINT interrupts a cell).

Set-up cells (``"setup": true`` in ``exec``) are the host's own code, e.g. ``question = ...``; they
are not numbered, so the model's first cell is ``<cell 1>`` in its tracebacks.

Host functions: when a run's extension gives the root model's code functions answered on the host
(the bench's CodeAct baseline, ``ctxfold.bench.codeact``), a set-up cell
calls ``_define_tools``; each tool's function sends a ``call`` of kind ``tool`` with one item
``{"name", "arguments"}`` and returns the host's answer (a result or an ``[error: ...]`` text).
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import json
import linecache
import mmap
import os
import resource
import signal
import struct
import sys
import threading
import time
import traceback  # at start-up: a cell that used up every fd must still get its traceback
import types
from _queue import SimpleQueue

# Imported for the type checker only: each import is start-up time of every worker.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

_HEADER = struct.Struct(">I")
_MMAP_MIN_BYTES = 64 * 1024 * 1024  # text files at least this big are decoded from an mmap
_MAX_SEND = 48 * 1024 * 1024  # one outgoing frame (the host refuses frames over 64 MiB)
_MAX_ITEMS = 4096  # sub-call items in one frame (the host's limit)
_WINDOW = 8  # frames of one batch awaiting an answer at once (the host holds at most 64)
_MAX_ANSWER_CHARS = 4_000_000
_MAX_SOURCES = 200  # spans in answer["sources"]
_MAX_TOOL_BYTES = 1024 * 1024  # one tool call's arguments (the host allows far less)
_ASYNC_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
_NOBODY = 65534
_MIB = 1024 * 1024
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
# Bound once: model code that patches json or os must not break the channel.
_dumps, _loads, _write = json.dumps, json.loads, os.write


class _BoundedWriter(io.TextIOBase):
    """A text stream that keeps the first and last ``limit/2`` characters and counts the rest."""

    encoding = "utf-8"
    errors = "strict"

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._head_max = max(limit, 0) // 2
        self._tail_max = max(limit, 0) - self._head_max
        self._head: list[str] = []
        self._head_len = 0
        self._tail: list[str] = []
        self._tail_len = 0
        self._cut = 0
        self._lock = threading.Lock()
        self.buffer = _ByteSink(self)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        n = len(s)
        with self._lock:
            start = min(max(self._head_max - self._head_len, 0), n)
            if start:
                self._head.append(s[:start])
                self._head_len += start
            rest = n - start
            if rest >= self._tail_max:
                self._cut += self._tail_len + rest - self._tail_max
                self._tail = [s[n - self._tail_max :]] if self._tail_max else []
                self._tail_len = self._tail_max
            elif rest:
                self._tail.append(s[start:])
                self._tail_len += rest
                if self._tail_len > 2 * self._tail_max + 1024:
                    self._trim_tail()
        return n

    def _trim_tail(self) -> None:
        joined = "".join(self._tail)
        excess = len(joined) - self._tail_max
        if excess > 0:
            self._cut += excess
            joined = joined[excess:]
        self._tail = [joined]
        self._tail_len = len(joined)

    def getvalue(self) -> str:
        """The text kept, with a note of how many characters were cut from its middle."""
        with self._lock:
            self._trim_tail()
            head, tail = "".join(self._head), "".join(self._tail)
            if not self._cut:
                return head + tail
            return f"{head}\n[... {self._cut} characters cut ...]\n{tail}"


class _ByteSink:
    """``sys.stdout.buffer`` for code that writes bytes: decoded as UTF-8 into the text writer."""

    def __init__(self, text: _BoundedWriter) -> None:
        self._text = text

    def write(self, data: bytes) -> int:
        self._text.write(bytes(data).decode("utf-8", "replace"))
        return len(data)

    def flush(self) -> None:
        return None


def _cut(text: str, limit: int) -> str:
    writer = _BoundedWriter(limit)
    writer.write(text)
    return writer.getvalue()


class _Interrupts:
    """SIGINT from the host: a KeyboardInterrupt in the running cell, never mid-way through a
    channel write (that would tear a frame); outside cells it is ignored."""

    def __init__(self) -> None:
        self.in_cell = False
        self._shielded = False
        self._deferred = False
        self._main = threading.main_thread().ident

    def reset(self) -> None:
        self._deferred = False

    def handler(self, signum: int, frame: types.FrameType | None) -> None:
        if not self.in_cell:
            return
        if self._shielded:
            self._deferred = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def shield(self) -> Iterator[None]:
        if threading.get_ident() != self._main or self._shielded:
            yield
            return
        self._shielded = True
        try:
            yield
        finally:
            self._shielded = False
        if self._deferred and self.in_cell:
            self._deferred = False
            raise KeyboardInterrupt


_INTERRUPTS = _Interrupts()


class _Pending:
    """One sub-call waiting for the host's reply."""

    __slots__ = ("done", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None


class _Channel:
    """The framed JSON channel to the host, with the table of pending sub-calls."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._reader = open(read_fd, "rb", buffering=1 << 16)  # noqa: SIM115 (lives forever)
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._main = threading.get_ident()
        self.orphaned = False
        self._write_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._pending_lock = threading.Lock()
        self._next_id = 0
        self.inbox: SimpleQueue[dict[str, Any]] = SimpleQueue()

    def send(self, message: dict[str, Any]) -> None:
        """Send one message (thread-safe)."""
        data = _dumps(message, ensure_ascii=False, separators=(",", ":"))
        self.send_raw(data.encode("utf-8", "replace"))

    def send_raw(self, payload: bytes) -> None:
        if self.orphaned:
            raise RuntimeError("sub-calls work only in the sandbox's own process, not in a fork")
        frame = memoryview(_HEADER.pack(len(payload)) + payload)
        with _INTERRUPTS.shield(), self._write_lock:
            try:
                while frame:
                    frame = frame[_write(self._write_fd, frame) :]
            except OSError:
                os._exit(0)  # the host is gone

    def orphan(self) -> None:
        """In a process forked by model code: let go of the channel (it is the worker's)."""
        self.orphaned = True
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (self._read_fd, self._write_fd):
            os.dup2(null, fd, inheritable=False)
        os.close(null)

    def _recv(self) -> dict[str, Any] | None:
        header = self._reader.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return None
        (size,) = _HEADER.unpack(header)
        payload = self._reader.read(size)
        if len(payload) < size:
            return None
        message = _loads(payload)
        return message if isinstance(message, dict) else {}

    def read_forever(self) -> None:
        """Reader thread: route replies to waiters and everything else to ``inbox``."""
        while True:
            try:
                message = self._recv()
            except (OSError, ValueError):
                message = None
            if message is None:
                os._exit(0)  # channel EOF: the host is gone
            if message.get("op") == "reply":
                with self._pending_lock:
                    pending = self._pending.pop(message.get("id", -1), None)
                if pending is not None:
                    pending.value = message.get("results")
                    pending.done.set()
            elif message.get("op") == "interrupt":  # as the host's SIGINT, when it cannot reach us
                signal.pthread_kill(self._main, signal.SIGINT)
            else:
                self.inbox.put(message)

    def call(self, kind: str, encoded_items: list[bytes]) -> list[Any]:
        """Send items (pre-encoded JSON objects) in as few frames as fit, at most
        ``_MAX_ITEMS`` each and ``_WINDOW`` awaiting an answer at once; return the replies."""
        frames: list[list[bytes]] = [[]]
        size = 0
        for item in encoded_items:
            full = len(frames[-1]) >= _MAX_ITEMS or size + len(item) > _MAX_SEND - 1024
            if frames[-1] and full:
                frames.append([])
                size = 0
            frames[-1].append(item)
            size += len(item) + 1
        waits: list[tuple[int, _Pending, int]] = []
        try:
            for number, chunk in enumerate(frames):
                if number >= _WINDOW:  # the host bounds the requests it holds for us
                    waits[number - _WINDOW][1].done.wait()
                pending = _Pending()
                with self._pending_lock:
                    self._next_id += 1
                    call_id = self._next_id
                    self._pending[call_id] = pending
                waits.append((call_id, pending, len(chunk)))
                head = f'{{"op":"call","id":{call_id},"kind":"{kind}","items":['.encode()
                self.send_raw(head + b",".join(chunk) + b"]}")
            replies: list[Any] = []
            for _, pending, count in waits:
                pending.done.wait()
                replies.extend(_reply_slots(pending.value, count))
            return replies
        finally:
            with self._pending_lock:
                for call_id, _, _ in waits:
                    self._pending.pop(call_id, None)


def _reply_slots(value: Any, count: int) -> list[Any]:
    if count == 0:
        return [value]
    if isinstance(value, str):  # the host refused the whole request: its reason in every slot
        return [value] * count
    if not isinstance(value, list):
        return ["[error: the host sent no answer for this sub-call]"] * count
    slots = [v if isinstance(v, str) else f"[error: bad reply {v!r:.80}]" for v in value[:count]]
    return slots + ["[error: the host sent no answer for this sub-call]"] * (count - len(slots))


def _item_fields(item: Any, where: str, with_context: bool) -> dict[str, Any] | str:
    """Check one prompt item; the wire dict, or an error string for its slot."""
    if isinstance(item, str):
        return {"prompt": item}
    if not isinstance(item, dict):
        return (
            f"[error: {where}: expected a str or a dict with a 'prompt', got {type(item).__name__}]"
        )
    fields = {
        "prompt": item.get("prompt"),
        "system": item.get("system"),
        "model": item.get("model"),
    }
    if not isinstance(fields["prompt"], str):
        return f"[error: {where}: 'prompt' must be a str, got {type(fields['prompt']).__name__}]"
    for key in ("system", "model"):
        if fields[key] is not None and not isinstance(fields[key], str):
            return f"[error: {where}: '{key}' must be a str or None]"
    if with_context:
        fields["context"] = item.get("context")
    elif isinstance(item.get("choices"), dict):  # {choice: description}
        fields["choices"] = list(item["choices"])
        fields["choice_notes"] = list(item["choices"].values())
    elif item.get("choices") is not None:
        fields["choices"] = item["choices"]
    return fields


def _encode_item(fields: dict[str, Any], where: str) -> bytes | str:
    try:
        data = _dumps(fields, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        return f"[error: {where}: the context is not JSON-serialisable ({exc})]"
    encoded = data.encode("utf-8", "replace")
    if len(encoded) > _MAX_SEND - 1024:
        return f"[error: {where}: too large to send ({len(encoded)} bytes); send a smaller slice]"
    return encoded


def _size_note(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple):
        return f" shape={shape}"
    try:
        return f" len={len(value)}"
    except Exception:
        return ""


def _bind_tool_arguments(
    params: list[str], required: list[str], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any] | str:
    """The arguments of one tool call by parameter name, or what is wrong with the call."""
    if len(args) > len(params):
        return f"takes at most {len(params)} positional arguments ({len(args)} given)"
    arguments = dict(zip(params, args, strict=False))
    for key, value in kwargs.items():
        if key not in params:
            return f"unexpected keyword argument {key!r}; it takes: {', '.join(params)}"
        if key in arguments:
            return f"got multiple values for argument {key!r}"
        arguments[key] = value
    missing = [p for p in required if p not in arguments]
    if missing:
        return f"missing argument {missing[0]!r}"
    return arguments


def _tool_function(worker: _Worker, spec: Any) -> Callable[..., str]:
    """The sandbox function of one tool: it sends a ``tool`` call to the host, which checks the
    arguments again and runs the tool there. Every failure is returned as an error string."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError("bad tool spec")
    name = spec["name"]
    if not name.isidentifier() or name.startswith("_"):
        raise ValueError(f"bad tool name {name!r}")
    params = [str(p) for p in spec.get("params") or []]
    required = [str(p) for p in spec.get("required") or []]

    def tool(*args: Any, **kwargs: Any) -> str:
        arguments = _bind_tool_arguments(params, required, args, kwargs)
        if isinstance(arguments, str):
            return f"[error: {name}: {arguments}]"
        try:
            data = _dumps(
                {"name": name, "arguments": arguments},
                ensure_ascii=False,
                allow_nan=False,
                separators=(",", ":"),
            )
        except (TypeError, ValueError, RecursionError) as exc:
            return (
                f"[error: {name}: arguments must be plain values (str, int, float, bool, list, "
                f"dict): {str(exc)[:200]}]"
            )
        encoded = data.encode("utf-8", "replace")
        if len(encoded) > _MAX_TOOL_BYTES:
            return f"[error: {name}: arguments too large ({len(encoded):,} bytes)]"
        reply = worker.call("tool", [encoded])[0]
        return reply if isinstance(reply, str) else f"[error: {name}: bad reply]"

    tool.__name__ = tool.__qualname__ = name
    tool.__doc__ = str(spec.get("doc") or "")
    return tool


def _no_input(prompt: object = "") -> str:
    """input() is not available: nobody is there to type. Compute the value in code instead."""
    raise RuntimeError("input() is not available in the sandbox: there is no user to type")


class _Worker:
    """The persistent namespace and the cells run in it."""

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel
        self._output_limit = 8000
        self._cells = 0
        self._module = types.ModuleType("__main__")
        self.ns: dict[str, Any] = self._module.__dict__
        self._answer: dict[str, Any] = {"content": "", "ready": False}
        self._scaffold: dict[str, Any] = {}
        self._tools: set[str] = set()
        self._builtins = dict(vars(builtins))
        self.inputs: dict[str, Any] = {}  # name -> the loaded input (``context`` too)
        self.setup_names: set[str] = set()  # names ctxfold's set-up cells defined

    # ---- setup ----

    def init(self, message: dict[str, Any]) -> None:
        """Load the contexts and build the namespace."""
        limit = message.get("output_limit")
        if isinstance(limit, int) and limit > 0:
            self._output_limit = limit
        self.ns["__builtins__"] = builtins
        contexts = message.get("contexts") or []
        for spec in contexts:
            self._scaffold[str(spec["name"])] = _load_context(spec)
        if contexts and "context" not in self._scaffold:
            self._scaffold["context"] = self._scaffold[str(contexts[0]["name"])]
        self.inputs = {name: self._scaffold[name] for name in self._scaffold}
        for fn in _make_functions(self):
            self._scaffold[fn.__name__] = fn
        self.ns.update(self._scaffold)
        self.ns["answer"] = self._answer
        sys.modules["__main__"] = self._module

    def add_input(self, spec: Any) -> str | None:
        """Load one more input (a session's ``add_context``); the error text, if it failed."""
        try:
            name = str(spec["name"])
            if name in self._scaffold and name not in self.inputs:
                raise ValueError(f"{name!r} is taken")
            value = _load_context(spec)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:2000]
        self._scaffold[name] = self.inputs[name] = self.ns[name] = value
        return None

    @property
    def scaffold_names(self) -> list[str]:
        return list(self._scaffold)

    def define_tools(self, specs: Any) -> list[str]:
        """Make one function per tool spec (the host's set-up cell calls this when the run gives
        code tools); they are scaffold from then on. Returns their names."""
        made = []
        for spec in specs if isinstance(specs, list) else []:
            fn = _tool_function(self, spec)
            name = fn.__name__
            if name == "answer" or (name in self._scaffold and name not in self._tools):
                raise ValueError(f"a tool cannot replace {name!r}")
            self._tools.add(name)
            self._scaffold[name] = self.ns[name] = fn
            made.append(name)
        return made

    def call(self, kind: str, items: list[bytes]) -> list[Any]:
        return self._channel.call(kind, items)

    # ---- cells ----

    def run_cell(self, code: str, cell_id: Any = None, setup: bool = False) -> dict[str, Any]:
        """Run one cell; return the ``result`` message (tagged with the host's ``cell_id``).
        A ``setup`` cell is not numbered: the model's cells are ``<cell 1>``, ``<cell 2>``, ..."""
        if not setup:
            self._cells += 1
        filename = "<setup>" if setup else f"<cell {self._cells}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        out, err = _BoundedWriter(self._output_limit), _BoundedWriter(self._output_limit)
        before = _answer_fields(self._answer)
        bound = {name: id(value) for name, value in self.ns.items()} if setup else {}
        error: str | None = None
        timed_out = False
        saved = sys.stdout, sys.stderr
        start = time.perf_counter()
        signal.signal(signal.SIGINT, _INTERRUPTS.handler)  # the cell before may have changed it
        _INTERRUPTS.reset()
        sys.stdout, sys.stderr = out, err
        try:
            try:
                _INTERRUPTS.in_cell = True
                self._exec(code, filename)
            finally:
                _INTERRUPTS.in_cell = False
        except KeyboardInterrupt as exc:
            timed_out = True
            error = _cut(_format_exception(exc), self._output_limit)
        except BaseException as exc:
            error = _cut(_format_exception(exc), self._output_limit)
        finally:
            sys.stdout, sys.stderr = saved
        duration = time.perf_counter() - start
        if setup:  # what ctxfold's own code defines is not listed as the model's variables
            self.setup_names.update(n for n, v in self.ns.items() if bound.get(n) != id(v))
        restored = self._restore_scaffold()
        after = _answer_fields(self._answer)
        content, ready, value, sources = after
        return {
            "op": "result",
            "cell": cell_id,
            "stdout": out.getvalue(),
            "stderr": err.getvalue(),
            "error": error,
            "timed_out": timed_out,
            "duration_s": duration,
            "answer": {"content": content, "ready": ready, "value": value, "sources": sources},
            "answer_changed": after != before,
            "restored": restored,
        }

    def _exec(self, code: str, filename: str) -> None:
        tree = ast.parse(code, filename, "exec")
        last: ast.expr | None = None
        final = tree.body[-1] if tree.body else None
        if isinstance(final, ast.Expr):  # a trailing expression is shown, as a REPL shows it
            last = final.value
            tree.body.pop()
        body = compile(tree, filename, "exec", flags=_ASYNC_FLAGS, dont_inherit=True)
        _run_code(body, self.ns)
        if last is not None:
            expr = compile(ast.Expression(last), filename, "eval", _ASYNC_FLAGS, dont_inherit=True)
            value = _run_code(expr, self.ns)
            if isinstance(value, str | bytes) and len(value) > self._output_limit:
                print(f"{value[: self._output_limit]!r} ... ({len(value)} long)")
            elif value is not None:
                print(repr(value))

    def _restore_scaffold(self) -> list[str]:
        restored: list[str] = []
        for name, original in self._scaffold.items():
            if self.ns.get(name, restored) is not original:
                self.ns[name] = original
                restored.append(name)
        if self.ns.get("__builtins__") is not builtins:
            self.ns["__builtins__"] = builtins
        table = vars(builtins)
        for name, original in self._builtins.items():
            if table.get(name, restored) is not original:
                table[name] = original
                restored.append(f"builtins.{name}")
        current = self.ns.get("answer")
        if isinstance(current, dict):
            self._answer = current  # adopted: `answer = {...}` is a fine way to answer
        else:
            self.ns["answer"] = self._answer
            restored.append("answer")
        return restored

    def answer_dict(self) -> dict[str, Any]:
        current = self.ns.get("answer")
        if not isinstance(current, dict):
            current = self.ns["answer"] = {"content": "", "ready": False}
        return current


def _run_code(code: types.CodeType, ns: dict[str, Any]) -> Any:
    value = eval(code, ns)
    if code.co_flags & 0x80:  # CO_COROUTINE: the cell used top-level await
        import asyncio  # rarely needed, slow to import

        value = asyncio.run(value)
    return value


def _answer_fields(answer: dict[str, Any]) -> tuple[str, bool, str | None, list[Any]]:
    """``answer`` as the host reads it: its content as text, whether it is ready, the content as
    JSON when it is a value rather than text (for a typed answer; ``None`` otherwise), and the
    well-formed spans of ``answer["sources"]``."""
    value: str | None = None
    try:
        content = answer.get("content", "")
        if content is not None and not isinstance(content, str):
            value = _json_or_none(content)
        content = "" if content is None else content if isinstance(content, str) else str(content)
    except Exception:
        content = "<the answer content could not be turned into text>"
    if len(content) > _MAX_ANSWER_CHARS:
        content = content[:_MAX_ANSWER_CHARS] + "\n[... answer cut ...]"
    try:
        ready = bool(answer.get("ready", False))
    except Exception:
        ready = False
    return content, ready, value, _spans(answer.get("sources"))


def _json_or_none(value: Any) -> str | None:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return None
    return text if len(text) <= _MAX_ANSWER_CHARS else None


_SPAN_KEYS = {
    "source": str,
    "start": int,
    "end": int,
    "path": str,
    "line_start": int,
    "line_end": int,
}


def _spans(sources: Any) -> list[dict[str, Any]]:
    """The dicts of ``sources`` that look like spans (checked again, and quoted, by the host)."""
    if not isinstance(sources, list):
        return []
    spans = []
    for item in sources[:_MAX_SOURCES]:
        if isinstance(item, dict):
            span = {
                key: value
                for key, value in item.items()
                if key in _SPAN_KEYS
                and type(value) is _SPAN_KEYS[key]
                and (not isinstance(value, str) or len(value) <= 4096)
            }
            spans.append(span)
    return spans


def _keep_cell_frames(exc: traceback.TracebackException, seen: set[int]) -> None:
    if id(exc) in seen:
        return
    seen.add(id(exc))
    frames = [f for f in exc.stack if f.filename.startswith("<cell ")]
    exc.stack = traceback.StackSummary.from_list(frames)
    for sub in (exc.__cause__, exc.__context__, *(exc.exceptions or ())):
        if sub is not None:
            _keep_cell_frames(sub, seen)


def _format_exception(exc: BaseException) -> str:
    """The traceback, showing only frames of the model's cells."""
    summary = traceback.TracebackException.from_exception(exc, compact=True)
    _keep_cell_frames(summary, set())
    return "".join(summary.format())


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _load_context(spec: dict[str, Any]) -> Any:
    kind, path = spec.get("kind"), str(spec.get("path"))
    if kind == "text_file":
        if os.stat(path).st_size >= _MMAP_MIN_BYTES:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return str(mm, "utf-8", "replace")
        return _read_bytes(path).decode("utf-8", "replace")
    if kind == "bytes_file":
        return _read_bytes(path)
    if kind == "json_file":
        with open(path, encoding="utf-8") as text:
            return json.load(text)
    if kind == "folder":
        files: Iterable[str] = spec.get("files") or ()
        return {
            rel: _read_bytes(os.path.join(path, rel)).decode("utf-8", "replace") for rel in files
        }
    raise ValueError(f"unknown context kind {kind!r}")


def _choice_arg(choices: Any, name: str) -> Any:
    """``choices`` when it is a list of str or a dict {choice: description}, else TypeError
    (the host checks the rest)."""
    if isinstance(choices, dict):
        if not all(isinstance(c, str) and isinstance(d, str) for c, d in choices.items()):
            raise TypeError(f"{name}: choices as a dict must map str to str (a description)")
        return dict(choices)
    if isinstance(choices, str | bytes) or not isinstance(choices, list | tuple):
        raise TypeError(
            f"{name}: choices must be a list of str or a dict, got {type(choices).__name__}"
        )
    if not all(isinstance(c, str) for c in choices):
        raise TypeError(f"{name}: every choice must be a str")
    return list(choices)


def _as_list(prompts: Any, name: str) -> list[Any]:
    if isinstance(prompts, str | bytes | dict) or not hasattr(prompts, "__iter__"):
        raise TypeError(f"{name} takes a list of prompts, got {type(prompts).__name__}")
    return list(prompts)


def _make_functions(worker: _Worker) -> list[Callable[..., Any]]:
    """The functions model code can call (each documented: models may call help())."""
    return [
        *_llm_functions(worker),
        *_rlm_functions(worker),
        *_answer_functions(worker),
        _cite_function(worker),
    ]


def _ask(worker: _Worker, kind: str, name: str, items: list[Any], with_context: bool) -> list[str]:
    """Send ``items`` as one sub-call request; an error text in the slot of a bad item."""
    slots: list[str | None] = [None] * len(items)
    encoded: list[bytes] = []
    where: list[int] = []
    for i, item in enumerate(items):
        label = f"{name} item {i}"
        fields = _item_fields(item, label, with_context)
        data = fields if isinstance(fields, str) else _encode_item(fields, label)
        if isinstance(data, str):
            slots[i] = data
        else:
            encoded.append(data)
            where.append(i)
    if encoded:
        for i, text in zip(where, worker.call(kind, encoded), strict=True):
            slots[i] = text
    return [s if s is not None else "[error: no answer]" for s in slots]


def _llm_functions(worker: _Worker) -> list[Callable[..., Any]]:
    """``llm_query`` and ``llm_batch``: sub-LLM calls through the host."""

    def llm_query(
        prompt: str,
        *,
        system: str | None = None,
        model: str | None = None,
        choices: list[str] | dict[str, str] | None = None,
    ) -> str:
        """Ask a sub-LLM one question and return its answer as text.

        Put the text it must read inside ``prompt``. ``system`` sets its system prompt; ``model``
        picks another sub-model by name. ``choices`` (a list of str) makes the answer exactly one
        of them, e.g. a label; as a dict ``{choice: description}`` the model also sees what each
        choice means. On failure the returned text starts with "[error:".
        """
        if not isinstance(prompt, str):
            raise TypeError(f"llm_query: prompt must be a str, got {type(prompt).__name__}")
        item: dict[str, Any] = {"prompt": prompt, "system": system, "model": model}
        if choices is not None:
            item["choices"] = _choice_arg(choices, "llm_query")
        return _ask(worker, "llm", "llm_query", [item], False)[0]

    def llm_batch(
        prompts: list[Any], *, choices: list[str] | dict[str, str] | None = None
    ) -> list[str]:
        """Ask many sub-LLM questions in parallel; one answer per prompt, in order.

        Each item is a str or a dict ``{"prompt": ..., "system": ..., "model": ..., "choices":
        ...}``. ``choices`` (a list of str) makes every answer exactly one of them, e.g. one label
        per line: ``llm_batch(lines, choices=["spam", "ham"])``; as a dict ``{choice:
        description}`` the model also sees what each choice means. A failing item gives a text
        starting with "[error:" in its slot; the other answers are kept.
        """
        items = _as_list(prompts, "llm_batch")
        if choices is not None:
            shared = _choice_arg(choices, "llm_batch")
            items = [
                {**p, "choices": p.get("choices", shared)}
                if isinstance(p, dict)
                else {"prompt": p, "choices": shared}
                for p in items
            ]
        return _ask(worker, "llm", "llm_batch", items, False)

    return [llm_query, llm_batch]


def _rlm_functions(worker: _Worker) -> list[Callable[..., Any]]:
    """``rlm_query`` and ``rlm_batch``: child RLMs run by the host."""

    def rlm_query(prompt: str, context: Any = None) -> str:
        """Hand a sub-problem to a child RLM with its own REPL; return its answer as text.

        ``context`` (JSON-like data: str, list, dict ...) becomes the child's ``context``.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"rlm_query: prompt must be a str, got {type(prompt).__name__}")
        return _ask(worker, "rlm", "rlm_query", [{"prompt": prompt, "context": context}], True)[0]

    def rlm_batch(prompts: list[Any], contexts: list[Any] | None = None) -> list[str]:
        """Run several child RLMs in parallel; one answer per prompt, in order.

        ``contexts``, when given, is a list as long as ``prompts``: the context of each child.
        """
        items = _as_list(prompts, "rlm_batch")
        if contexts is not None:
            ctxs = _as_list(contexts, "rlm_batch contexts")
            if len(ctxs) != len(items):
                raise ValueError("rlm_batch: prompts and contexts must have the same length")
            items = [
                {**p, "context": c} if isinstance(p, dict) else {"prompt": p, "context": c}
                for p, c in zip(items, ctxs, strict=True)
            ]
        return _ask(worker, "rlm", "rlm_batch", items, True)

    return [rlm_query, rlm_batch]


def _answer_functions(worker: _Worker) -> list[Callable[..., Any]]:
    """``FINAL``, ``FINAL_VAR``, ``budget``, ``SHOW_VARS`` and the host's ``_define_tools``."""

    def FINAL(text: Any) -> None:
        """Give the final answer: sets ``answer["content"] = str(text)`` and ``answer["ready"]``."""
        answer = worker.answer_dict()
        answer["content"] = str(text)
        answer["ready"] = True

    def FINAL_VAR(name: Any) -> None:
        """Give the value of the variable called ``name`` (a str) as the final answer."""
        if not isinstance(name, str):
            FINAL(name)  # given the value itself: that is the answer
            return
        key = name.strip().strip("\"'`")
        if key not in worker.ns:
            print(f"FINAL_VAR: there is no variable named {key!r}; the answer is not set")
            return
        FINAL(worker.ns[key])

    def budget() -> dict[str, Any]:
        """What is left of the run's budget (iterations, tokens, dollars, seconds, sub-calls)."""
        reply = worker.call("budget", [])[0]
        return reply if isinstance(reply, dict) else {}

    def SHOW_VARS() -> None:
        """Print the variables you made, with their type and size."""
        skip = {*worker.scaffold_names, *worker.setup_names, "answer"}
        rows = [
            f"{name}: {type(value).__name__}{_size_note(value)}"
            for name, value in list(worker.ns.items())
            if not name.startswith("_")
            and name not in skip
            and not isinstance(value, types.ModuleType)
        ]
        print("\n".join(rows) if rows else "(no variables yet)")

    def _define_tools(specs: str) -> None:
        """Used by the host to give this run's code its tools (JSON specs); not for model code."""
        worker.define_tools(_loads(specs))

    return [FINAL, FINAL_VAR, budget, SHOW_VARS, _define_tools]


def _cite_function(worker: _Worker) -> Callable[..., Any]:
    def cite(where: Any, first: Any, last: Any = None, *, source: str = "context") -> str:
        """Say where a claim comes from: returns the quoted text (check it) and adds the span
        to ``answer["sources"]``.

        ``cite(start, end)``: characters ``start`` to ``end`` (excluded) of a text input;
        ``source`` names another one (``"context_1"``). ``cite(path, first_line, last_line)``:
        lines of one file of a folder input, counted from 1, both included. A span outside the
        input raises ValueError."""
        if source not in worker.inputs:
            raise ValueError(f"cite: source must name an input ({', '.join(worker.inputs)})")
        value = worker.inputs[source]
        if isinstance(where, str):
            quote, span = _cite_lines(value, source, where, first, first if last is None else last)
        else:
            quote, span = _cite_chars(value, source, where, first)
        answer = worker.answer_dict()
        sources = answer.get("sources")
        if not isinstance(sources, list):
            sources = answer["sources"] = []
        if len(sources) >= _MAX_SOURCES:
            raise ValueError(f"cite: an answer holds at most {_MAX_SOURCES} sources")
        sources.append(span)
        return quote

    return cite


def _whole(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"cite: {name} must be a whole number, got {type(value).__name__}")
    return value


def _cite_chars(value: Any, source: str, start: Any, end: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(value, str):
        raise ValueError(
            f"cite: {source} is not text; for a folder input use cite(path, first_line, last_line)"
        )
    a, b = _whole(start, "start"), _whole(end, "end")
    if not 0 <= a < b <= len(value):
        raise ValueError(
            f"cite: {a}:{b} is not a span of {source} (0 <= start < end <= {len(value)})"
        )
    return value[a:b], {"source": source, "start": a, "end": b}


def _cite_lines(
    value: Any, source: str, path: str, first: Any, last: Any
) -> tuple[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise ValueError(f"cite: {source} is not a folder input; use cite(start, end)")
    if path not in value:
        raise ValueError(f"cite: {path!r} is not a file of {source}")
    lines = value[path].splitlines(keepends=True)
    a, b = _whole(first, "first_line"), _whole(last, "last_line")
    if not 1 <= a <= b <= len(lines):
        raise ValueError(f"cite: lines {a}-{b} are not in {path!r} (it has {len(lines)} lines)")
    span = {"source": source, "path": path, "line_start": a, "line_end": b}
    return "".join(lines[a - 1 : b]), span


def _channel_fds(argv: list[str]) -> tuple[int, int, list[str]]:
    """The channel's fds and the remaining arguments; in ``stdio`` mode, moves fds 0 and 1 aside
    (fd 0 becomes /dev/null, fd 1 joins fd 2)."""
    if argv[1] == "stdio":
        read_fd, write_fd = os.dup(0), os.dup(1)  # new fds are not inheritable
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
        return read_fd, write_fd, argv[2:]
    return int(argv[1]), int(argv[2]), argv[3:]


def _apply_limits(limits: dict[str, Any]) -> None:
    """Set resource limits (soft and hard) on this process and everything it starts."""
    wanted: list[tuple[int, int, int]] = [(resource.RLIMIT_CORE, 0, 0)]
    for key, res, scale in (
        ("memory_mb", resource.RLIMIT_AS, _MIB),
        ("file_mb", resource.RLIMIT_FSIZE, _MIB),
        ("open_files", resource.RLIMIT_NOFILE, 1),
    ):
        if isinstance(limits.get(key), int):
            wanted.append((res, limits[key] * scale, limits[key] * scale))
    cpu = limits.get("cpu_seconds")
    if isinstance(cpu, int):  # SIGXCPU at the soft limit, SIGKILL at the hard one
        wanted.append((resource.RLIMIT_CPU, cpu, cpu + 5))
    processes = limits.get("processes")
    if isinstance(processes, int):  # RLIMIT_NPROC counts every task of the real uid
        others = 0 if isinstance(limits.get("uid"), int) else _tasks_of(os.getuid())
        wanted.append((resource.RLIMIT_NPROC, others + processes, others + processes))
    for res, soft, hard in wanted:
        current = resource.getrlimit(res)[1]
        top = hard if current == resource.RLIM_INFINITY else min(hard, current)
        resource.setrlimit(res, (min(soft, top), top))
    if isinstance(limits.get("seccomp"), str):
        _load_filter(limits["seccomp"])


def _load_filter(encoded: str) -> None:
    """Load the host's seccomp program (base64 of ``struct sock_filter`` entries) on this
    process, before any thread starts, so every thread and child inherits it. Used where no
    wrapper (bubblewrap) loads it; ``no_new_privs`` is set first, as the kernel requires."""
    import base64
    import ctypes

    program = base64.b64decode(encoded)
    libc = ctypes.CDLL(None, use_errno=True)

    class _Program(ctypes.Structure):
        _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))

    code = ctypes.create_string_buffer(program, len(program))
    prog = _Program(len(program) // 8, ctypes.cast(code, ctypes.c_void_p))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


def _tasks_of(uid: int) -> int:
    """Tasks (threads) other processes of ``uid`` have now, as far as /proc shows them."""
    count = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            lines = _read_bytes(f"/proc/{name}/status").decode().splitlines()
            fields = dict(line.split(":", 1) for line in lines)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return count


def _drop_root(uid: int) -> int | None:
    """Leave root for ``uid`` (or nobody); the uid now held, or None if root could not be left."""
    if os.geteuid() != 0:
        return os.geteuid()
    for candidate in (uid, _NOBODY):
        try:
            os.setgroups([])
            os.setresgid(candidate, candidate, candidate)
            os.setresuid(candidate, candidate, candidate)
        except OSError:
            continue
        return candidate
    return None


def main(argv: list[str]) -> None:
    """Serve the host: init, then cells until ``shutdown`` or channel EOF."""
    sys.dont_write_bytecode = True
    builtins.input = _no_input
    read_fd, write_fd, rest = _channel_fds(argv)
    for fd in (read_fd, write_fd):
        os.set_inheritable(fd, False)  # processes model code starts must not get the channel
    limits: dict[str, Any] = {}
    setup_error: str | None = None
    try:
        limits = _loads(rest[0]) if rest else {}
        _apply_limits(limits)
    except Exception as exc:
        setup_error = f"could not set the resource limits: {type(exc).__name__}: {exc}"
    channel = _Channel(read_fd, write_fd)
    os.register_at_fork(after_in_child=channel.orphan)
    worker = _Worker(channel)
    signal.signal(signal.SIGINT, _INTERRUPTS.handler)
    threading.Thread(target=channel.read_forever, name="ctxfold-channel", daemon=True).start()
    channel.send({"op": "started"})  # imports done: a spare worker is warm from here on
    first = channel.inbox.get()
    uid: int | None = None
    try:
        if setup_error:
            raise RuntimeError(setup_error)
        if first.get("op") != "init":
            raise ValueError(f"expected an init message, got {first.get('op')!r}")
        worker.init(first)
        if isinstance(limits.get("uid"), int):
            uid = _drop_root(limits["uid"])
            if uid is None:
                raise PermissionError("the worker could not drop root privileges")
    except Exception as exc:
        channel.send({"op": "init_error", "error": f"{type(exc).__name__}: {exc}"})
        os._exit(1)
    channel.send({"op": "ready", "uid": uid})
    while True:
        message = channel.inbox.get()
        if message.get("op") == "exec":
            code, cell_id = str(message.get("code", "")), message.get("cell")
            result = worker.run_cell(code, cell_id, message.get("setup") is True)
            if channel.orphaned:  # a process model code forked ended its copy of the cell
                os._exit(0)
            channel.send(result)
        elif message.get("op") == "add_input":
            channel.send({"op": "input_added", "error": worker.add_input(message.get("spec"))})
        elif message.get("op") == "shutdown":
            os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
