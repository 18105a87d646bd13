"""Scaffold performance: ctxfold and ``rlms`` side by side on the same fake OpenAI endpoint.

Two measurements, each repeated ``repeats`` times with the libraries alternating (medians are
reported), each against its own :class:`~ctxfold.testing.FakeOpenAIServer`:

- **per-turn overhead**: ``turns`` trivial root turns (each reply a tiny ``repl`` cell such as
  ``x = 3`` / ``print(x)``; the last sets ``answer["ready"]``) against a server that answers at
  once. The server's own time per request is measured separately, by replaying the very same
  request bodies over one raw keep-alive socket (the floor any client pays). The overhead is the
  wall time of the whole run (making the RLM, running it, closing it) less ``turns`` times the
  server's time, over ``turns``: the time per turn not spent waiting on the model, start-up and
  tear-down included (this is how the reference figure for rlms, about 29 ms, was taken). The
  steady figure leaves start-up and tear-down out: the server notes when each root request
  reaches it, and the mean gap between consecutive root requests after the first, less the
  server's time, is the scaffold's own time per turn.
- **spare workers**: an ``RLM`` keeps a started sandbox worker for its next run; the benchmark
  makes a new ``RLM`` per run, so it holds the process-wide spare pool
  (:func:`ctxfold.sandbox.keep_warm`) throughout, as a long-lived program making many RLMs
  would. So a ctxfold run starts from a worker started after the previous run ended and only
  sends it its input. Each repeat also times one **cold** ctxfold run, every spare stopped first:
  what the first run of a process pays. Before every measurement the benchmark waits until no
  spare is being started, so that no background start-up overlaps a timed run of either library.
- **batch**: one cell runs a batch of ``batch`` sub-calls (``llm_batch`` in ctxfold,
  ``llm_query_batched`` in rlms) against a server answering after ``latency`` seconds; the cell
  times the call itself. The ideal is ``ceil(batch / concurrency) * latency``. ctxfold runs with
  ``concurrency`` workers; rlms' batch concurrency is fixed by its ``LMHandler``
  (``batch_max_concurrent=16``, not configurable through ``rlm.RLM``), so ``concurrency=16``
  compares like with like. The server reports the most requests it had in flight at once, and
  the benchmark how long full garbage collections held its own process (and the GIL, so every
  request thread) during the batch: a repeat well over the ideal with a long one is the
  collector, not the scheduling (``benchmarks/results/perf-distributions.md``, stop 24).
- **warm-up**: each library first makes one short run, not counted (imports, first
  connections, the price table), and the warm-up ends with a full collection
  (``gc.collect()``). A program that has started up has had that collection; left pending, it
  came due in one measured repeat of each process (77-78 ms, walking the ~110,000 objects of
  start-up: ``benchmarks/gc_freeze.py``, stop 25).

Both libraries get the same script, keyed on message content: the question carries a marker
(``PERF-SCRIPT turns:N`` or ``PERF-SCRIPT batch:N:FUNCTION``) and each reply names its turn in a
``# turn K`` comment, so the reply function finds the next turn from the history alone. Both use
the answer-dict protocol (rlms 0.1.3 ends a run when ``answer["ready"]`` is set, and reads only
```` ```repl ```` blocks, which ctxfold reads too). rlms runs with ``environment="local"`` (its
default, an in-process REPL) and the ``openai`` backend.

**Why the fake server runs in a separate process** (``isolated_server=True``, the default): in
a thread of the benchmark process, the server's request handling shares the GIL with the library
under test (16 handler threads during a batch), so both sides' figures mix. Measured both ways in
one sitting (2 cores, rlms 0.1.3, the machine busy with other work), in-process against
separate process: rlms' steady time per turn 10.4 against 8.9 ms and its server time 0.41 against
0.23 ms; batch ratios 1.065 against 1.055 (ctxfold) and 1.19 against 1.18 (rlms). The separate
process is the deployment being modelled (the model server is another process or machine) and
reads cleaner, so it is the default; ``isolated_server=False`` keeps the in-process mode for
comparison (``benchmarks/perf.py --in-process-server``).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.metadata
import itertools
import json
import math
import multiprocessing
import os
import platform
import re
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any, Protocol, TypeAlias
from urllib.parse import urlsplit

from ctxfold.sandbox import Sandbox

SandboxFactory: TypeAlias = str | Callable[[], Sandbox]
"""ctxfold's sandbox for the benchmark: a name (``"process"``) or a function making one."""

__all__ = [
    "LibraryPerf",
    "PerfReport",
    "SandboxFactory",
    "full_collections",
    "machine_info",
    "rlms_version",
    "run_perf",
]

_MARKER = re.compile(r"PERF-SCRIPT (turns|batch):(\d+)(?::(\w+))?")
_TURN = re.compile(r"^# turn (\d+)$", re.MULTILINE)
_SUB_PREFIX = "SUBQ "
_SUB_ANSWER = "ok"
_CONTEXT = "The quick brown fox jumps over the lazy dog. " * 20
_MODEL = "fake-model"
_API_KEY = "sk-perf-not-needed"
_REPLAY_ROUNDS = 3
_TURN_TARGET_MS = 5.0
_TURN_TARGET_RATIO = 10.0
_BATCH_TARGET_RATIO = 1.05
_LEAN_TARGET_MS = 1.5  # a fresh RLM's overhead per turn, start-up included (the cold row)


# -- the scripted model, served by the fake server ------------------------------------------


def _script_reply(messages: list[dict[str, Any]]) -> str:
    """The fake model: sub-calls answer ``ok``; root turns follow the question's script."""
    last = str(messages[-1].get("content") or "") if messages else ""
    if last.startswith(_SUB_PREFIX):
        return _SUB_ANSWER
    script: re.Match[str] | None = None
    done = 0
    for message in messages:
        content = str(message.get("content") or "")
        if message.get("role") == "assistant":
            done = max([done, *(int(k) for k in _TURN.findall(content))])
        elif script is None:
            script = _MARKER.search(content)
    if script is None:
        return "```repl\nprint('no PERF-SCRIPT marker in the question')\n```"
    return _turn_code(script[1], int(script[2]), script[3] or "", done + 1)


def _turn_code(kind: str, size: int, function: str, turn: int) -> str:
    """The reply for root turn ``turn`` (1-based) of a script."""
    last = size if kind == "turns" else 2
    if turn < last and kind == "turns":
        body = f"x = {turn}\nprint(x)"
    elif turn < last:  # the batch cell
        body = (
            "import time\n"
            "t0 = time.perf_counter()\n"
            f"results = {function}([{_SUB_PREFIX!r} + str(i) for i in range({size})])\n"
            "batch_s = time.perf_counter() - t0\n"
            f"n_ok = sum(r == {_SUB_ANSWER!r} for r in results)\n"
            "print(batch_s, n_ok)"
        )
    else:
        value = "str(x)" if kind == "turns" else "repr(batch_s) + ' ' + str(n_ok)"
        body = f'answer["content"] = {value}\nanswer["ready"] = True'
    return f"Next step.\n```repl\n# turn {turn}\n{body}\n```"


class _Recorder:
    """The reply function given to the server: the script, noting when root requests arrive."""

    def __init__(self) -> None:
        self.root_times: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        now = time.perf_counter()
        text = _script_reply(messages)
        if text != _SUB_ANSWER:
            with self._lock:
                self.root_times.append(now)
        return text


@dataclass(frozen=True, slots=True)
class _ServerStats:
    root_times: list[float]
    root_bodies: list[bytes]
    max_in_flight: int
    requests: int


def _collect(server: Any, recorder: _Recorder) -> _ServerStats:
    bodies = [
        json.dumps(body).encode()
        for body in list(server.requests)
        if not str(body["messages"][-1].get("content") or "").startswith(_SUB_PREFIX)
    ]
    return _ServerStats(
        root_times=list(recorder.root_times),
        root_bodies=bodies,
        max_in_flight=int(server.max_in_flight),
        requests=len(server.requests),
    )


class _Server(Protocol):
    base_url: str

    def stats(self) -> _ServerStats: ...


class _ThreadServer:
    """The fake server in a thread of this process."""

    def __init__(self, latency: float) -> None:
        from ctxfold.testing import FakeOpenAIServer

        self._recorder = _Recorder()
        self._server = FakeOpenAIServer(self._recorder, latency=latency)
        self.base_url = self._server.base_url

    def stats(self) -> _ServerStats:
        return _collect(self._server, self._recorder)

    def close(self) -> None:
        self._server.close()


def _serve_in_child(conn: Connection, latency: float) -> None:
    """Entry point of the server process: serve until told to stop."""
    server = _ThreadServer(latency)
    try:
        conn.send(server.base_url)
        while True:
            command = conn.recv()
            if command == "stats":
                conn.send(server.stats())
            else:
                break
    except (EOFError, OSError):
        pass  # the parent went away
    finally:
        server.close()
        conn.close()


class _ProcessServer:
    """The fake server in its own process (so it does not share the GIL with the client)."""

    def __init__(self, latency: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve_in_child, args=(child, latency), name="ctxfold-perf-server", daemon=True
        )
        self._proc.start()
        child.close()
        if not self._conn.poll(60):
            self.close()
            raise RuntimeError("the fake server process did not start within 60 s")
        self.base_url: str = self._conn.recv()

    def stats(self) -> _ServerStats:
        self._conn.send("stats")
        stats: _ServerStats = self._conn.recv()
        return stats

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()


@contextlib.contextmanager
def _serving(latency: float, isolated: bool) -> Iterator[_Server]:
    server = _ProcessServer(latency) if isolated else _ThreadServer(latency)
    try:
        yield server
    finally:
        server.close()


def _replay_ms(base_url: str, bodies: list[bytes], rounds: int = _REPLAY_ROUNDS) -> float:
    """Mean round trip (ms) of ``bodies`` sent over one raw keep-alive socket: the server's own
    time per request plus loopback transport, with next to no client work."""
    if not bodies:
        return 0.0
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    path = f"{url.path.rstrip('/')}/chat/completions"
    frames = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]
    times: list[float] = []
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        for _ in range(rounds):
            for frame in frames:
                started = time.perf_counter()
                sock.sendall(frame)
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                reader.read(length)
                times.append(time.perf_counter() - started)
    return 1000 * statistics.fmean(times)


# -- one measurement per library ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TurnSample:
    run_s: float  # the whole run: start-up, every turn, tear-down
    gap_ms: float  # mean time from one root request to the next, server included
    server_ms: float  # the server's own time per root request (replayed)
    turns: int

    @property
    def overhead_ms(self) -> float:
        """Time per turn not spent waiting on the model, start-up and tear-down included."""
        return (1000 * self.run_s - self.turns * self.server_ms) / self.turns

    @property
    def steady_ms(self) -> float:
        """The same between consecutive turns only (start-up and tear-down left out)."""
        return self.gap_ms - self.server_ms


@dataclass(frozen=True, slots=True)
class _BatchSample:
    batch_s: float
    max_in_flight: int
    gc_ms: float = 0.0  # full garbage collections in this process during the batch, in all


@contextlib.contextmanager
def full_collections() -> Iterator[list[float]]:
    """The length (ms) of each full garbage collection in this process while the block runs:
    it holds the GIL, so every request thread of a batch waits it out."""
    pauses: list[float] = []
    began = [0.0]

    def note(phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") == 2:
            if phase == "start":
                began[0] = time.perf_counter()
            else:
                pauses.append(1000 * (time.perf_counter() - began[0]))

    gc.callbacks.append(note)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(note)


def _question(kind: str, size: int, function: str = "") -> str:
    tail = f":{function}" if function else ""
    return f"Follow the benchmark script. PERF-SCRIPT {kind}:{size}{tail}"


@dataclass(frozen=True, slots=True)
class _Setup:
    isolated_server: bool
    concurrency: int
    sandbox: SandboxFactory


def _run_ctxfold(base_url: str, question: str, iterations: int, setup: _Setup) -> str:
    from ctxfold.budget import Budget
    from ctxfold.rlm import RLM

    spec = f"openai:{_MODEL}@{base_url}"
    budget = Budget(iterations=iterations)
    with RLM(spec, budget=budget, concurrency=setup.concurrency, sandbox=setup.sandbox) as rlm:
        result = rlm.run(question, context=_CONTEXT)
    if not result.ready:
        raise RuntimeError(f"ctxfold did not finish the script: {result.stop_reason}")
    return result.answer


def _run_rlms(base_url: str, question: str, iterations: int, setup: _Setup) -> str:
    rlm_module: Any = importlib.import_module("rlm")
    rlm = rlm_module.RLM(
        backend="openai",
        backend_kwargs={"model_name": _MODEL, "base_url": base_url, "api_key": _API_KEY},
        environment="local",
        max_iterations=iterations,
        max_concurrent_subcalls=setup.concurrency,  # rlm_query_batched only (batched llm: 16)
    )
    try:
        completion = rlm.completion(_CONTEXT, root_prompt=question)
    finally:
        rlm.close()
    return str(completion.response)


_Runner = Callable[[str, str, int, _Setup], str]
_RUNNERS: dict[str, tuple[_Runner, str]] = {
    "ctxfold": (_run_ctxfold, "llm_batch"),
    "rlms": (_run_rlms, "llm_query_batched"),
}


def _quiet() -> None:
    """Wait until ctxfold starts no spare worker in the background (see the module docstring)."""
    from ctxfold.sandbox import settle_spares

    settle_spares()


def _measure_turns(library: str, turns: int, setup: _Setup) -> _TurnSample:
    run, _ = _RUNNERS[library]
    _quiet()
    with _serving(0.0, setup.isolated_server) as server:
        started = time.perf_counter()
        answer = run(server.base_url, _question("turns", turns), turns + 2, setup)
        run_s = time.perf_counter() - started
        stats = server.stats()
        server_ms = _replay_ms(server.base_url, stats.root_bodies)
    if answer.strip() != str(turns - 1) or len(stats.root_times) != turns:
        raise RuntimeError(
            f"{library} did not follow the turn script: answer {answer!r}, "
            f"{len(stats.root_times)} root requests for {turns} turns"
        )
    # The first gap holds the sandbox's start-up (ctxfold starts it during the first root call,
    # rlms before it): only the gaps after it are steady turns.
    gaps = [b - a for a, b in itertools.pairwise(stats.root_times)]
    steady = gaps[1:] or gaps
    return _TurnSample(run_s, 1000 * statistics.fmean(steady), server_ms, turns)


def _measure_batch(library: str, batch: int, latency: float, setup: _Setup) -> _BatchSample:
    run, function = _RUNNERS[library]
    _quiet()
    with _serving(latency, setup.isolated_server) as server, full_collections() as pauses:
        answer = run(server.base_url, _question("batch", batch, function), 4, setup)
        stats = server.stats()
    seconds, _, n_ok = answer.strip().partition(" ")
    if n_ok != str(batch) or stats.requests < batch:
        raise RuntimeError(
            f"{library}: {n_ok or 0} of {batch} sub-calls answered ({stats.requests} requests "
            f"seen by the server): {answer!r}"
        )
    return _BatchSample(float(seconds), stats.max_in_flight, sum(pauses))


# -- the report -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LibraryPerf:
    """One library's figures (medians over the repeats; the raw samples in ``samples``).

    Attributes:
        library: ``"ctxfold"`` or ``"rlms"``.
        version: the installed version.
        overhead_ms: time per root turn not spent waiting on the model: the whole run's wall
            time less ``turns * server_ms``, over ``turns`` (start-up and tear-down included).
        cold_overhead_ms: the same for a run that finds no spare worker ready (ctxfold's first
            run in a process); rlms keeps nothing between runs, so for it this is
            ``overhead_ms``. ``None`` when not measured.
        steady_ms: the same between consecutive turns only (start-up and tear-down left out).
        server_ms: the fake server's own time per root request (plus loopback transport).
        run_s: wall time of the whole turns run (making the RLM, the run, closing it).
        batch_s: wall time of the batch call inside the cell.
        batch_ratio: ``batch_s`` over the ideal ``ceil(batch / concurrency) * latency``.
        max_in_flight: most requests the server had in flight at once (the highest repeat).
        samples: every repeat's figures, by name.
    """

    library: str
    version: str
    overhead_ms: float
    steady_ms: float
    server_ms: float
    run_s: float
    batch_s: float
    batch_ratio: float
    max_in_flight: int
    cold_overhead_ms: float | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PerfReport:
    """The outcome of :func:`run_perf`: settings, machine, and each library's figures.

    ``rlms`` is ``None`` when it was not measured; ``note`` then says why.
    """

    turns: int
    batch: int
    latency: float
    concurrency: int
    repeats: int
    isolated_server: bool
    ideal_batch_s: float
    ctxfold: LibraryPerf
    rlms: LibraryPerf | None
    machine: dict[str, str]
    date: str
    note: str = ""

    @property
    def overhead_ratio(self) -> float | None:
        """How many times more per-turn overhead rlms has than ctxfold (``None`` without rlms)."""
        if self.rlms is None:
            return None
        return self.rlms.overhead_ms / max(self.ctxfold.overhead_ms, 1e-9)

    @property
    def targets(self) -> dict[str, bool]:
        """ctxfold's targets: overhead <= 5 ms/turn, >= 10x below rlms, batch <= 1.05x ideal
        (and the first two for a cold start, when it was measured)."""
        out = {
            f"overhead <= {_TURN_TARGET_MS:g} ms/turn": self.ctxfold.overhead_ms <= _TURN_TARGET_MS,
            f"batch <= {_BATCH_TARGET_RATIO:g} x ideal": (
                self.ctxfold.batch_ratio <= _BATCH_TARGET_RATIO
            ),
        }
        ratio = self.overhead_ratio
        if ratio is not None:
            out[f"overhead >= {_TURN_TARGET_RATIO:g}x below rlms"] = ratio >= _TURN_TARGET_RATIO
        ratios = self.ctxfold.samples.get("batch_ratio")
        if ratios:
            out[f"batch <= {_BATCH_TARGET_RATIO:g} x ideal in every repeat"] = (
                max(ratios) <= _BATCH_TARGET_RATIO
            )
        cold = self.ctxfold.cold_overhead_ms
        if cold is not None:
            out[f"cold start: overhead <= {_TURN_TARGET_MS:g} ms/turn"] = cold <= _TURN_TARGET_MS
            out[f"cold start: overhead <= {_LEAN_TARGET_MS:g} ms/turn (lean)"] = (
                cold <= _LEAN_TARGET_MS
            )
            if self.rlms is not None:
                out[f"cold start: overhead >= {_TURN_TARGET_RATIO:g}x below rlms"] = (
                    self.rlms.overhead_ms / max(cold, 1e-9) >= _TURN_TARGET_RATIO
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, with the derived ratios and target checks."""
        data = asdict(self)
        data["overhead_ratio"] = self.overhead_ratio
        data["targets"] = self.targets
        return data

    def to_markdown(self) -> str:
        """The settings, a ctxfold-vs-rlms table with ratios, and the target checks."""
        libs = [p for p in (self.ctxfold, self.rlms) if p is not None]
        where = "its own process" if self.isolated_server else "a thread of the benchmark process"
        lines = [
            f"Fake OpenAI-compatible server on 127.0.0.1 in {where}; medians of {self.repeats} "
            f"repeat(s), libraries alternating; {self.turns} root turns at latency 0; "
            f"a batch of {self.batch} sub-calls at {1000 * self.latency:g} ms latency, "
            f"concurrency {self.concurrency} (ideal {self.ideal_batch_s:.3f} s). ctxfold's "
            f"sandbox: {self.machine.get('sandbox', '?')}, a spare worker kept warm between "
            "runs (the cold row: none ready, as for a process's first run); rlms' REPL: "
            "in-process, nothing kept between runs.",
            "",
            "| measure | "
            + " | ".join(f"{p.library} {p.version}" for p in libs)
            + (" | rlms / ctxfold |" if self.rlms else " |"),
            "|---|" + "---:|" * len(libs) + ("---:|" if self.rlms else ""),
        ]
        rows: list[tuple[str, Callable[[LibraryPerf], float], str]] = [
            ("overhead per root turn, not waiting on the model (ms)", _get("overhead_ms"), ".2f"),
        ]
        if self.ctxfold.cold_overhead_ms is not None:
            rows.append(("the same, cold start: no spare worker (ms)", _cold, ".2f"))
        rows += [
            ("the same between turns only, start-up left out (ms)", _get("steady_ms"), ".2f"),
            ("server's own time per root request (ms)", _get("server_ms"), ".2f"),
            (f"whole run of {self.turns} turns, start-up included (s)", _get("run_s"), ".3f"),
            (f"batch of {self.batch}: wall time (s)", _get("batch_s"), ".3f"),
            ("batch: wall time / ideal", _get("batch_ratio"), ".3f"),
            ("batch: most requests in flight", _get("max_in_flight"), "d"),
        ]
        for label, get, fmt in rows:
            cells = [format(int(get(p)) if fmt == "d" else get(p), fmt) for p in libs]
            ratio = ""
            if self.rlms is not None and fmt != "d":
                ratio = f" {get(self.rlms) / max(get(self.ctxfold), 1e-9):.1f}× |"
            elif self.rlms is not None:
                ratio = " |"
            lines.append(f"| {label} | " + " | ".join(cells) + " |" + ratio)
        lines += ["", *self._distributions(libs), ""]
        for name, ok in self.targets.items():
            lines.append(f"- ctxfold target {name}: {'met' if ok else 'MISSED'}")
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)

    def _distributions(self, libs: list[LibraryPerf]) -> list[str]:
        """A table of each measure's min, median and max over the repeats."""
        names = [
            ("overhead_ms", "overhead per root turn (ms)", ".2f"),
            ("cold_overhead_ms", "the same, cold start (ms)", ".2f"),
            ("steady_ms", "between turns only (ms)", ".2f"),
            ("batch_ratio", "batch: wall time / ideal", ".3f"),
            ("max_in_flight", "batch: most requests in flight", ".0f"),
            ("batch_gc_ms", "batch: full garbage collections in the host (ms)", ".0f"),
        ]
        lines = [
            f"Over the {self.repeats} repeat(s): min / median / max.",
            "",
            "| measure | " + " | ".join(p.library for p in libs) + " |",
            "|---|" + "---:|" * len(libs),
        ]
        for name, label, fmt in names:
            cells = [_spread(p.samples.get(name), fmt) for p in libs]
            if any(cells):
                lines.append(f"| {label} | " + " | ".join(c or "" for c in cells) + " |")
        return lines


def _spread(values: list[float] | None, fmt: str) -> str | None:
    """``min / median / max`` of ``values`` (``None`` when there are none)."""
    if not values:
        return None
    low, mid, high = min(values), statistics.median(values), max(values)
    return " / ".join(format(v, fmt) for v in (low, mid, high))


def _get(name: str) -> Callable[[LibraryPerf], float]:
    return lambda perf: float(getattr(perf, name))


def _cold(perf: LibraryPerf) -> float:
    return perf.overhead_ms if perf.cold_overhead_ms is None else perf.cold_overhead_ms


def _load() -> str:
    """The 1-minute load average (other work on a shared machine skews every figure)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def _sandbox_level(spec: SandboxFactory) -> str:
    """The isolation level of ctxfold's sandbox (e.g. ``bwrap+netns+rlimits``), if it says."""
    try:
        from ctxfold.sandbox import make_sandbox

        sandbox = make_sandbox(spec) if isinstance(spec, str) else spec()
        level = str(getattr(sandbox, "isolation", "unknown"))
        sandbox.close()
    except Exception as exc:  # a description only: never fail the benchmark over it
        return f"unknown ({type(exc).__name__})"
    return level


def rlms_version() -> str | None:
    """The installed ``rlms`` version, or ``None`` when ``import rlm`` fails."""
    try:
        importlib.import_module("rlm")
        return importlib.metadata.version("rlms")
    except Exception:
        return None


def machine_info() -> dict[str, str]:
    """What the figures depend on: cores, Python, OS, and the versions of the libraries."""
    from ctxfold import __version__

    info = {
        "nproc": str(os.cpu_count() or "?"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "ctxfold": __version__,
        "rlms": rlms_version() or "not installed",
    }
    for package in ("openai", "httpx2"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[package] = importlib.metadata.version(package)
    return info


def _libraries(include_rlms: bool) -> tuple[list[str], str]:
    """The libraries to measure, and a note on rlms when it is left out."""
    if not include_rlms:
        return ["ctxfold"], "rlms was not measured (include_rlms=False)."
    if rlms_version() is None:
        return ["ctxfold"], "rlms is not installed (`pip install 'ctxfold[perf]'`): ctxfold alone."
    return ["ctxfold", "rlms"], ""


def _sample(
    libraries: list[str],
    setup: _Setup,
    turns: int,
    batch: int,
    latency: float,
    repeats: int,
    say: Callable[[str], None],
) -> tuple[dict[str, list[_TurnSample]], dict[str, list[_BatchSample]], list[_TurnSample]]:
    """Every measurement, libraries alternating: turn samples, batch samples, cold starts."""
    from ctxfold.sandbox import keep_warm, stop_spares

    turn_samples: dict[str, list[_TurnSample]] = {lib: [] for lib in libraries}
    batch_samples: dict[str, list[_BatchSample]] = {lib: [] for lib in libraries}
    cold_samples: list[_TurnSample] = []
    with keep_warm():  # as a long-lived program: see the module docstring
        for library in libraries:  # warm-up: imports, first connections; not counted
            say(f"warm-up {library}")
            _measure_turns(library, 2, setup)
        gc.collect()  # start-up's full collection, not one in a measured repeat
        for rep in range(repeats):
            order = libraries if rep % 2 == 0 else libraries[::-1]
            for library in order:
                say(f"repeat {rep + 1}/{repeats}: {library}, {turns} turns")
                turn_samples[library].append(_measure_turns(library, turns, setup))
            for library in order[::-1]:
                say(f"repeat {rep + 1}/{repeats}: {library}, batch of {batch}")
                batch_samples[library].append(_measure_batch(library, batch, latency, setup))
            say(f"repeat {rep + 1}/{repeats}: ctxfold, {turns} turns, cold start")
            _quiet()
            stop_spares()
            cold_samples.append(_measure_turns("ctxfold", turns, setup))
    return turn_samples, batch_samples, cold_samples


def run_perf(
    *,
    turns: int = 20,
    batch: int = 64,
    latency: float = 0.2,
    concurrency: int = 16,
    repeats: int = 3,
    include_rlms: bool = True,
    isolated_server: bool = True,
    sandbox: SandboxFactory = "process",
    progress: Callable[[str], None] | None = None,
) -> PerfReport:
    """Measure per-turn overhead and batch wall time for ctxfold (and rlms, when installed).

    Args:
        turns: root turns per overhead run (at least 2).
        batch: sub-calls in the batch cell.
        latency: seconds the server waits before each answer in the batch measurement.
        concurrency: ctxfold's sub-call concurrency (rlms' batch concurrency is fixed at 16).
        repeats: times each measurement runs, libraries alternating; medians are reported.
        include_rlms: also measure rlms (skipped, with a note, when ``import rlm`` fails).
        isolated_server: run the fake server in its own process (see the module docstring).
        sandbox: ctxfold's sandbox: ``"process"`` (the default) or a factory of sandboxes, e.g.
            ``lambda: ProcessSandbox(isolate=False)`` to measure what isolation costs.
        progress: called with a short line before each measurement.
    """
    if turns < 2 or batch < 1 or latency <= 0 or concurrency < 1 or repeats < 1:
        raise ValueError("need turns >= 2, batch >= 1, latency > 0, concurrency >= 1, repeats >= 1")
    libraries, note = _libraries(include_rlms)
    setup = _Setup(isolated_server, concurrency, sandbox)
    load_before = _load()
    turn_samples, batch_samples, cold_samples = _sample(
        libraries, setup, turns, batch, latency, repeats, progress or (lambda line: None)
    )
    ideal = math.ceil(batch / concurrency) * latency
    perfs = {
        lib: _summarise(lib, turn_samples[lib], batch_samples[lib], ideal) for lib in libraries
    }
    cold = statistics.median(t.overhead_ms for t in cold_samples)
    perfs["ctxfold"] = replace(
        perfs["ctxfold"],
        cold_overhead_ms=cold,
        samples={
            **perfs["ctxfold"].samples,
            "cold_overhead_ms": [t.overhead_ms for t in cold_samples],
        },
    )
    if "rlms" in perfs:
        perfs["rlms"] = replace(perfs["rlms"], cold_overhead_ms=perfs["rlms"].overhead_ms)
    return PerfReport(
        turns=turns,
        batch=batch,
        latency=latency,
        concurrency=concurrency,
        repeats=repeats,
        isolated_server=isolated_server,
        ideal_batch_s=ideal,
        ctxfold=perfs["ctxfold"],
        rlms=perfs.get("rlms"),
        machine={
            **machine_info(),
            "sandbox": _sandbox_level(sandbox),
            "load": f"{load_before} before, {_load()} after",
        },
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        note=note,
    )


def _summarise(
    library: str, turns: list[_TurnSample], batches: list[_BatchSample], ideal: float
) -> LibraryPerf:
    from ctxfold import __version__

    samples = {
        "overhead_ms": [t.overhead_ms for t in turns],
        "steady_ms": [t.steady_ms for t in turns],
        "server_ms": [t.server_ms for t in turns],
        "run_s": [t.run_s for t in turns],
        "batch_s": [b.batch_s for b in batches],
        "batch_ratio": [b.batch_s / ideal for b in batches],
        "max_in_flight": [float(b.max_in_flight) for b in batches],
        "batch_gc_ms": [b.gc_ms for b in batches],
    }
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return LibraryPerf(
        library=library,
        version=__version__ if library == "ctxfold" else rlms_version() or "?",
        overhead_ms=medians["overhead_ms"],
        steady_ms=medians["steady_ms"],
        server_ms=medians["server_ms"],
        run_s=medians["run_s"],
        batch_s=medians["batch_s"],
        batch_ratio=medians["batch_ratio"],
        max_in_flight=max(b.max_in_flight for b in batches),
        samples=samples,
    )


if __name__ == "__main__":  # pragma: no cover - the script in benchmarks/ is the entry point
    print(run_perf(progress=lambda line: print(line, file=sys.stderr)).to_markdown())
