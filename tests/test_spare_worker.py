"""Spare workers (sandbox/_spare.py): a started worker kept ready for the next sandbox.

What must hold: a spare is used by one sandbox only, once, and nothing of one run reaches the
next; spares exist only while the pool is held and are all gone when it is let go of (no
orphans); an adopted worker is exactly as confined as a fresh one; inputs that cannot be shown
to a spare safely make the sandbox start a fresh worker instead. No timings are asserted.
"""

from __future__ import annotations

import ast
import gc
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ctxfold
from conftest import worker_children
from ctxfold.models import Message, ScriptedModel
from ctxfold.sandbox import (
    CellResult,
    ContextSpec,
    ProcessSandbox,
    SparePool,
    SubcallRequest,
    keep_warm,
    stop_spares,
)
from ctxfold.sandbox._cleanup import drain, remove_soon
from ctxfold.sandbox._isolation import BWRAP
from ctxfold.sandbox._spare import POOL, stage_inputs


def _echo(request: SubcallRequest) -> list[str] | dict[str, Any]:
    if request.kind == "budget":
        return {}
    return [f"echo:{item.prompt}" for item in request.items]


def _text(tmp_path: Path, name: str, text: str) -> ContextSpec:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return ContextSpec(name="context_0", kind="text_file", path=str(path), files=[])


def _ok(result: CellResult) -> str:
    assert result.error is None, result.error
    return result.stdout.strip()


def _spare_pids(pool: SparePool = POOL) -> list[int | None]:
    return [getattr(spare, "worker_pid", None) for spare in pool.spares()]


def _run_once(spec: ContextSpec, code: str = "pass", **options: Any) -> str:
    """Start a sandbox, run one cell, close it; the cell's output."""
    with ProcessSandbox(**options) as sandbox:
        sandbox.start([spec], _echo)
        return _ok(sandbox.execute(code))


@pytest.fixture
def held(no_orphans: None) -> Iterator[None]:
    """The pool held for the test (and let go of at its end: no spare may survive)."""
    stop_spares()
    with keep_warm():
        yield
    assert POOL.spares() == []


def test_a_spare_is_used_once_and_nothing_crosses_from_one_run_to_the_next(
    tmp_path: Path, held: None
) -> None:
    first = _text(tmp_path, "first.txt", "the first run's input")
    leave_behind = (
        "import os\nsecret = 'left by run 1'\n"
        "open('note.txt', 'w').write(secret)\nopen('/tmp/note.txt', 'w').write(secret)\n"
        "import builtins\nbuiltins.planted = secret\nprint(os.getpid())"
    )
    _run_once(first, leave_behind)
    POOL.settle()
    [spare_pid] = _spare_pids()

    second = _text(tmp_path, "second.txt", "the second run's input")
    with ProcessSandbox() as sandbox:
        sandbox.start([second], _echo)
        assert sandbox.worker_pid == spare_pid  # adopted
        assert POOL.spares() == []  # taken out of the pool: nobody else gets it
        seen = _ok(
            sandbox.execute(
                "import os, builtins\n"
                "print(context, 'secret' in globals(), hasattr(builtins, 'planted'), "
                "sorted(os.listdir('.')), os.path.exists('/tmp/note.txt'))"
            )
        )
    assert seen == "the second run's input False False [] False"
    POOL.settle()
    [next_pid] = _spare_pids()
    assert next_pid != spare_pid  # the used worker went with its sandbox; a new one waits


def test_an_adopted_worker_is_confined_like_a_fresh_one(tmp_path: Path, held: None) -> None:
    spec = _text(tmp_path, "input.txt", "abc")
    _run_once(spec)
    POOL.settle()
    [spare_pid] = _spare_pids()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    probe = (
        "import os, resource, socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "    net = 'reached the host'\n"
        "except OSError:\n"
        "    net = 'no network'\n"
        "try:\n"
        f"    open({spec['path']!r}, 'a')\n"
        "    writable = 'input writable'\n"
        "except OSError:\n"
        "    writable = 'input read-only'\n"
        "print(os.getuid(), resource.getrlimit(resource.RLIMIT_AS)[0] // 2**20, net, writable)"
    )
    fresh = _run_once(spec, probe, spare=False)
    with ProcessSandbox() as sandbox:
        sandbox.start([spec], _echo)
        assert sandbox.worker_pid == spare_pid
        adopted = _ok(sandbox.execute(probe))
        isolation = sandbox.isolation
    listener.close()
    uid, memory, *rest = adopted.split(" ", 2)
    # Under bubblewrap the RAM-backed scratch (1024), /tmp and /dev/shm (256 each) are counted
    # within the default memory_mb of 8192; the address space gets the rest.
    assert int(memory) == 8192 - (1024 + 2 * 256 if isolation == BWRAP else 0)
    if isolation == BWRAP:
        assert rest == ["no network input read-only"]
    if os.geteuid() == 0:
        assert int(uid) != 0
        assert uid != fresh.split()[0]  # every sandbox has a uid of its own
    assert fresh.split(" ", 1)[1] == adopted.split(" ", 1)[1]


def test_no_spare_unless_the_pool_is_held(tmp_path: Path, no_orphans: None) -> None:
    stop_spares()
    _run_once(_text(tmp_path, "input.txt", "abc"))
    POOL.settle()
    assert POOL.spares() == []


def test_a_sandbox_may_opt_out_and_other_configurations_do_not_match(
    tmp_path: Path, held: None
) -> None:
    spec = _text(tmp_path, "input.txt", "abc")
    _run_once(spec)
    POOL.settle()
    [spare_pid] = _spare_pids()
    for options in ({"spare": False}, {"memory_mb": 4096}):
        with ProcessSandbox(**options) as sandbox:  # type: ignore[arg-type]
            sandbox.start([spec], _echo)
            assert sandbox.worker_pid != spare_pid
    assert spare_pid in _spare_pids()


def test_a_dead_spare_is_not_handed_out(tmp_path: Path, held: None) -> None:
    spec = _text(tmp_path, "input.txt", "abc")
    _run_once(spec)
    POOL.settle()
    [spare] = POOL.spares()
    assert isinstance(spare, ProcessSandbox) and spare.worker_pid is not None
    its_processes = worker_children()
    os.killpg(spare.worker_pid, 9)
    os.waitid(os.P_PID, spare.worker_pid, os.WEXITED | os.WNOWAIT)
    deadline = time.monotonic() + 10  # the processes inside its namespace die just after
    while worker_children() & its_processes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _run_once(spec, "print(context)") == "abc"


def test_folder_inputs_show_only_their_listed_files(tmp_path: Path, held: None) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("A", encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("B", encoding="utf-8")
    (folder / "unlisted.txt").write_text("not for the model", encoding="utf-8")
    spec = ContextSpec(
        name="context_0", kind="folder", path=str(folder), files=["a.txt", "sub/b.txt"]
    )
    _run_once(_text(tmp_path, "warm.txt", "x"))
    POOL.settle()
    [spare_pid] = _spare_pids()
    with ProcessSandbox() as sandbox:
        sandbox.start([spec], _echo)
        assert sandbox.worker_pid == spare_pid
        seen = _ok(sandbox.execute("print(sorted(context.items()))"))
        assert seen == "[('a.txt', 'A'), ('sub/b.txt', 'B')]"
        if sandbox.isolation == BWRAP:
            where = sandbox._staging
            found = _ok(
                sandbox.execute(
                    f"import os\nprint(sorted(os.path.relpath(os.path.join(d, f), {where!r}) "
                    f"for d, _, fs in os.walk({where!r}) for f in fs), "
                    f"os.path.exists({str(folder / 'unlisted.txt')!r}))"
                )
            )
            listed, _, visible = found.rpartition(" ")
            # (after dropping root, the worker may not even list the directory)
            assert set(ast.literal_eval(listed)) <= {"0/a.txt", "0/sub/b.txt"}
            assert visible == "False"


def test_a_symlink_in_a_folder_input_means_a_fresh_worker(tmp_path: Path, held: None) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("A", encoding="utf-8")
    (folder / "link.txt").symlink_to("a.txt")
    spec = ContextSpec(
        name="context_0", kind="folder", path=str(folder), files=["a.txt", "link.txt"]
    )
    _run_once(_text(tmp_path, "warm.txt", "x"))
    POOL.settle()
    [spare_pid] = _spare_pids()
    with ProcessSandbox() as sandbox:
        sandbox.start([spec], _echo)
        if sandbox.isolation == BWRAP:
            assert sandbox.worker_pid != spare_pid
        assert _ok(sandbox.execute("print(context['link.txt'])")) == "A"


def test_staging_links_or_copies_and_refuses_escapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("data", encoding="utf-8")
    spec = ContextSpec(name="context_0", kind="text_file", path=str(source), files=[])
    staging = tmp_path / "staging"
    staging.mkdir()
    [staged] = stage_inputs([spec], str(staging)) or []
    assert Path(staged["path"]).read_text(encoding="utf-8") == "data"
    assert Path(staged["path"]).stat().st_ino == source.stat().st_ino  # a hard link

    def no_links(self: Path, target: Path) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(Path, "hardlink_to", no_links)
    other = tmp_path / "staging2"
    other.mkdir()
    [copied] = stage_inputs([spec], str(other)) or []
    assert Path(copied["path"]).read_text(encoding="utf-8") == "data"  # small: copied
    monkeypatch.setattr("ctxfold.sandbox._spare._COPY_MAX", 2)
    third = tmp_path / "staging3"
    third.mkdir()
    assert stage_inputs([spec], str(third)) is None  # too big to copy: a fresh worker instead

    folder = tmp_path / "docs"
    folder.mkdir()
    for bad in (["../in.txt"], ["/etc/passwd"], ["./x"], ["a//b"]):
        target = tmp_path / f"s{len(list(tmp_path.iterdir()))}"
        target.mkdir()
        escape = ContextSpec(name="context_0", kind="folder", path=str(folder), files=bad)
        assert stage_inputs([escape], str(target)) is None
    missing = ContextSpec(name="context_0", kind="text_file", path=str(tmp_path / "no"), files=[])
    last = tmp_path / "staging4"
    last.mkdir()
    assert stage_inputs([missing], str(last)) is None


def _scripted_rlm() -> ctxfold.RLM:
    def reply(messages: list[Message]) -> str:
        if len(messages) < 4:
            return "```python\nprint(len(context))\n```"
        return '```python\nanswer["content"] = str(len(context))\nanswer["ready"] = True\n```'

    return ctxfold.RLM(model=ScriptedModel(reply, name="root"))


def test_an_rlm_keeps_a_spare_between_its_runs_and_close_stops_it(no_orphans: None) -> None:
    before = worker_children()
    rlm = _scripted_rlm()
    assert rlm.run("How long?", context="abcd").answer == "4"
    rlm._spares.settle()
    [spare_pid] = _spare_pids(rlm._spares)
    assert POOL.spares() == []  # its own pool, not the process-wide one
    assert rlm.run("How long?", context="abcdefgh").answer == "8"  # on the spare
    assert spare_pid not in _spare_pids(rlm._spares)
    rlm.close()
    assert rlm._spares.spares() == []
    assert worker_children() - before == set()


def test_an_rlm_that_is_never_closed_lets_go_when_collected(no_orphans: None) -> None:
    rlm = _scripted_rlm()
    assert rlm.run("How long?", context="abc").answer == "3"
    pool = rlm._spares
    pool.settle()
    assert len(pool.spares()) == 1
    del rlm
    gc.collect()
    assert pool.spares() == []


def test_while_the_process_wide_pool_is_held_every_rlm_shares_it(held: None) -> None:
    first = _scripted_rlm()
    assert first.run("How long?", context="ab").answer == "2"
    first.close()  # its own pool was not used: the spare stays in the shared one
    POOL.settle()
    [spare_pid] = _spare_pids()
    second = _scripted_rlm()
    assert second.run("How long?", context="abc").answer == "3"
    assert spare_pid not in _spare_pids()
    second.close()


class _FakeSpare:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def spare_alive(self) -> bool:
        return not self.closed


def test_pool_rules_with_fake_spares(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = SparePool()
    made: list[_FakeSpare] = []

    def make(cancelled: threading.Event) -> _FakeSpare:
        made.append(_FakeSpare())
        return made[-1]

    pool.offer("k", make)  # not held: nothing is started
    pool.settle()
    assert made == [] and pool.take("k") is None

    hold = pool.hold()
    pool.offer("k", make)
    pool.offer("k", make)  # one per configuration
    assert pool.take("k") is None and made == []  # not due yet: not waited for ...
    pool.settle()
    assert len(made) == 1 and pool.spares() == [made[0]]  # ... but started for the next one
    spare = pool.take("k")
    assert spare is made[0] and pool.take("k") is None  # handed out once
    made[0].close()

    monkeypatch.setattr("ctxfold.sandbox._spare._DELAY_S", 0.0)
    pool.offer("k", make)
    pool.settle()
    made[1].close()  # died while waiting
    assert pool.take("k") is None

    started, release = threading.Event(), threading.Event()

    def slow(cancelled: threading.Event) -> _FakeSpare:
        started.set()
        cancelled.wait(10)  # a start in progress gives up when cancelled
        release.set()
        made.append(_FakeSpare())
        return made[-1]

    pool.offer("k", slow)
    assert started.wait(10)
    hold.close()  # the last hold: the running start is cancelled and waited for
    assert release.is_set() and made[-1].closed and pool.spares() == []
    hold.close()  # idempotent


def test_remove_soon_makes_the_directory_go_at_once_and_deletes_it_later(tmp_path: Path) -> None:
    doomed = tmp_path / "scratch"
    (doomed / "sub").mkdir(parents=True)
    (doomed / "sub" / "f.txt").write_text("x", encoding="utf-8")
    remove_soon(str(doomed))
    assert not doomed.exists()
    drain()
    assert list(tmp_path.iterdir()) == []
    remove_soon(str(tmp_path / "never-there"))  # nothing to do, no error
