"""Attacks through the command line: a dead worker's pipe, answers that cannot be printed,
inputs that hang or forge error lines, and what a killed host leaves in /tmp."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from ctxfold.sandbox import _tempdirs
from ctxfold.testing.fake_openai import FakeOpenAIServer

from .attack_helpers import FIND_WORKER, code

# Patches the worker so that it exits right after sending a cell's result: the host's next
# write to it (the next cell) meets a closed pipe.
_EXIT_AFTER_RESULT = (
    FIND_WORKER
    + """
import os
channel = _find_worker()._channel
real = type(channel).send
def send(self, message):
    real(self, message)
    if message.get("op") == "result":
        os._exit(0)
type(channel).send = send
print("patched")
"""
)


def _ask(
    server: FakeOpenAIServer, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ctxfold",
            "ask",
            "q",
            "--model",
            f"openai:m@{server.base_url}",
            "--quiet",
            *args,
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


def _by_turn(*replies: str) -> Any:
    def reply(messages: list[dict[str, Any]]) -> str:
        turn = sum(m["role"] == "assistant" for m in messages)
        return replies[min(turn, len(replies) - 1)]

    return reply


def test_a_write_to_a_dead_worker_does_not_kill_the_command(tmp_path: Path) -> None:
    trace = tmp_path / "run.jsonl"
    replies = _by_turn(
        code(_EXIT_AFTER_RESULT),
        code("print('after')"),
        code("answer['content'] = 'fine'\nanswer['ready'] = True"),
    )
    with FakeOpenAIServer(replies) as server:
        for _ in range(3):  # it was a race the host lost 4 times in 6
            done = _ask(server, "--context", "/etc/hostname", "--trace", str(trace))
            assert done.returncode == 0, (done.returncode, done.stderr)
            assert done.stdout == "fine\n"
            assert trace.read_text().splitlines()[-1].startswith('{"type": "run_end"')


def test_an_answer_with_a_lone_surrogate_is_printed_escaped() -> None:
    reply = _by_turn("I think it is caf\udce9.")  # no code: the budget ends, last word
    with FakeOpenAIServer(reply) as server:
        plain = _ask(server, "--context", "/etc/hostname", "--max-iterations", "1")
        as_json = _ask(server, "--context", "/etc/hostname", "--max-iterations", "1", "--json")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == "I think it is caf\\udce9.\n"
    assert "Traceback" not in plain.stderr + as_json.stderr
    assert '"answer": "I think it is caf\\udce9."' in as_json.stdout


def test_a_fifo_as_input_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "input.fifo"
    os.mkfifo(fifo)
    with FakeOpenAIServer("never asked") as server:
        done = _ask(server, "--context", str(fifo), timeout=30)
        resumed = subprocess.run(
            [sys.executable, "-m", "ctxfold", "resume", str(fifo)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    for result in (done, resumed):
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "not a regular file" in result.stderr
    assert server.requests == []


def test_a_path_with_a_newline_cannot_forge_an_error_line(tmp_path: Path) -> None:
    forged = str(tmp_path / "missing\nctxfold: error: everything is fine")
    with FakeOpenAIServer("never asked") as server:
        done = _ask(server, "--context", forged, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("ctxfold: error: ")
    assert "missing\\nctxfold" in done.stderr


# -- a host killed with kill -9 ------------------------------------------------------------

_HOST = """
import sys, time
from ctxfold.sandbox import ProcessSandbox, host_temp_dir
sandbox = ProcessSandbox()
sandbox.start([], lambda request: {})
sandbox.execute("open('note.txt', 'w').write('x')")
print(host_temp_dir(), flush=True)
time.sleep(60)
"""


def test_folders_of_a_killed_host_are_swept_by_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    base = Path(tempfile.gettempdir())
    before = {p.name for p in base.glob("ctxfold-*")}
    host = subprocess.Popen([sys.executable, "-c", _HOST], stdout=subprocess.PIPE, text=True)
    assert host.stdout is not None
    folder = Path(host.stdout.readline().strip())
    host.send_signal(signal.SIGKILL)
    host.wait(timeout=10)
    host.stdout.close()
    left = {p.name for p in base.glob("ctxfold-*")} - before
    assert left == {folder.name}, left  # everything it made was inside its one folder
    assert any(folder.iterdir())

    mine = _tempdirs.host_temp_dir()  # a live host's folder is never swept
    monkeypatch.setattr(_tempdirs, "_GRACE_S", 0.0)
    removed = _tempdirs.remove_stale_host_dirs()
    assert str(folder) in removed and not folder.exists()
    assert Path(mine).is_dir() and mine not in removed


def test_a_folder_just_made_is_spared(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    young = tmp_path / f"{_tempdirs.PREFIX}young"
    young.mkdir()
    old = tmp_path / f"{_tempdirs.PREFIX}old"
    old.mkdir()
    os.utime(old, (time.time() - 60, time.time() - 60))
    assert _tempdirs.remove_stale_host_dirs(str(tmp_path)) == [str(old)]
    assert young.is_dir() and not old.exists()
