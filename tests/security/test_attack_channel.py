"""Cells that attack the worker<->host channel or the scaffold the engine relies on."""

from __future__ import annotations

import json

import pytest

from ctxfold.sandbox import ProcessSandbox

from .attack_helpers import text

# Finds the channel without being told: every pipe among the worker's fds above 2.
_FIND_PIPES = (
    "import os, struct\n"
    "pipes = []\n"
    "for fd in sorted(map(int, os.listdir('/proc/self/fd'))):\n"
    "    try:\n"
    "        if fd > 2 and os.readlink(f'/proc/self/fd/{fd}').startswith('pipe:'):\n"
    "            pipes.append(fd)\n"
    "    except OSError:\n"
    "        pass\n"
    "def send(data, fds=None):\n"
    "    for fd in fds or pipes:\n"
    "        try:\n"
    "            os.write(fd, data)\n"
    "        except OSError:\n"
    "            pass\n"
    "def frame(obj):\n"
    "    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()\n"
    "    return struct.pack('>I', len(data)) + data\n"
    "import json\n"
)

_FORGERIES = {
    "stale-result": {"op": "result", "cell": 10**6, "stdout": "FORGED", "error": None},
    "result-without-id": {"op": "result", "stdout": "FORGED", "error": None},
    "fake-ready": {"op": "ready", "uid": 0},
    "fake-init-error": {"op": "init_error", "error": "FORGED"},
    "call-bad-id": {"op": "call", "id": "x", "kind": "llm", "items": [{"prompt": "p"}]},
    "call-bad-kind": {"op": "call", "id": 777, "kind": "shell", "items": ["rm -rf /"]},
    "call-bad-items": {"op": "call", "id": 778, "kind": "llm", "items": [{"prompt": 5}, None]},
    "reply-to-host": {"op": "reply", "id": 1, "results": ["FORGED"]},
    "not-a-dict": [1, 2, 3],
}


@pytest.mark.parametrize("name", sorted(_FORGERIES))
def test_forged_messages_are_ignored(sandbox: ProcessSandbox, name: str) -> None:
    forged = json.dumps(_FORGERIES[name])
    result = sandbox.execute(f"{_FIND_PIPES}send(frame({forged!r}.encode()))\nprint('real')")
    assert result.error is None, result.error
    assert result.stdout == "real\n" and "FORGED" not in result.stdout
    assert not result.restarted
    assert sandbox.execute("print(llm_query('still'))").stdout == "echo:still\n"


@pytest.mark.parametrize(
    "payload",
    [b"not json at all", b"\xff\xfe\x00garbage", b"{" * 10_000, b""],
    ids=["text", "binary", "deep-nesting", "empty"],
)
def test_garbage_frames_are_ignored(sandbox: ProcessSandbox, payload: bytes) -> None:
    result = sandbox.execute(f"{_FIND_PIPES}send(frame({payload!r}))\nprint('real')")
    assert result.error is None and result.stdout == "real\n"


def test_frame_flood_does_not_stall_the_host(sandbox: ProcessSandbox) -> None:
    code = f"{_FIND_PIPES}f = frame({{'op': 'noise'}}) * 50_000\nsend(f)\nprint('real')"
    result = sandbox.execute(code, timeout=60)
    assert result.error is None and result.stdout == "real\n"


@pytest.mark.parametrize("size", [2**31, 2**32 - 1, 64 * 2**20 + 1])
def test_oversized_length_header_costs_only_the_worker(sandbox: ProcessSandbox, size: int) -> None:
    sandbox.execute("kept = 1")
    result = sandbox.execute(
        f"{_FIND_PIPES}send(struct.pack('>I', {size}))\nimport time\ntime.sleep(5)"
    )
    assert result.restarted and result.error is not None and "over the limit" in result.error
    assert sandbox.execute("print(context[:3], 'kept' in globals())").stdout == "the False\n"


def test_torn_frame_then_death_restarts(sandbox: ProcessSandbox) -> None:
    result = sandbox.execute(f"{_FIND_PIPES}send(struct.pack('>I', 1000) + b'{{')\nos._exit(0)")
    assert result.restarted
    assert sandbox.execute("print('ok')").stdout == "ok\n"


def test_stealing_host_messages_only_hurts_the_thief(sandbox: ProcessSandbox) -> None:
    # reads whatever the host sends next (the reply to its own sub-call) off the channel
    code = (
        f"{_FIND_PIPES}import threading\n"
        "def steal():\n"
        "    for fd in pipes:\n"
        "        os.set_blocking(fd, False)\n"
        "        try:\n"
        "            os.read(fd, 1 << 16)\n"
        "        except OSError:\n"
        "            pass\n"
        "threading.Timer(0.05, steal).start()\n"
        "print(llm_query('x'))"
    )
    result = sandbox.execute(code, timeout=2)
    assert result.error is None or result.timed_out or result.restarted
    assert sandbox.execute("print('ok')", timeout=30).stdout.endswith("ok\n")


# ---- the scaffold ----


@pytest.mark.parametrize(
    "cell",
    [
        "llm_query = lambda *a, **k: 'forged'",
        "del llm_batch, rlm_query, FINAL",
        "context = 'replaced'",
        "del answer",
        "answer = None",
        "globals().clear()",
    ],
)
def test_scaffold_overwrites_are_undone(sandbox: ProcessSandbox, cell: str) -> None:
    sandbox.execute(cell)
    result = sandbox.execute(
        "print(llm_query('q'), callable(llm_batch), callable(FINAL), context[:9], answer)"
    )
    assert result.error is None, result.error
    assert result.stdout.startswith("echo:q True True the quick {")


_SHRUGGED_OFF = {  # the worker restores these, or never relied on the patched name
    "print": "import builtins\nbuiltins.print = lambda *a, **k: None",
    "del-builtins": "import builtins\ndel builtins.print, builtins.len",
    "import": "import builtins\nbuiltins.__import__ = None",
    "std-streams": "import sys\nsys.stdout = None\nsys.stderr = None",
    "json": "import json\njson.dumps = json.loads = None",
    "os-io": "import os\nos.write = os.read = None",
    "sys-modules": "import sys\nsys.modules['json'] = None\nsys.modules['struct'] = None",
}
_SELF_HARM = {  # these break the model's own tools; the host and the run must carry on
    "event-wait": "import threading\nthreading.Event.wait = lambda *a, **k: True",
    "signal": "import signal\nsignal.signal = None",
    "switch-interval": "import sys\nsys.setswitchinterval(1000)",
}


@pytest.mark.parametrize("name", sorted(_SHRUGGED_OFF))
def test_monkey_patching_the_runtime_is_undone(sandbox: ProcessSandbox, name: str) -> None:
    sandbox.execute(_SHRUGGED_OFF[name])
    result = sandbox.execute("print(len(context), llm_query('q'))", timeout=10)
    assert result.error is None, result.error
    assert result.stdout == "19 echo:q\n" and not result.restarted


@pytest.mark.parametrize("name", sorted(_SELF_HARM))
def test_self_harm_to_the_runtime_does_not_reach_the_host(
    sandbox: ProcessSandbox, name: str
) -> None:
    sandbox.execute(_SELF_HARM[name], timeout=5)
    sandbox.execute("print(len(context), llm_query('q'))", timeout=2)
    again = sandbox.execute("print('next')", timeout=5)
    assert again.stdout == "next\n" or again.restarted, text(again)
    sandbox.execute("import sys\nsys.setswitchinterval(0.005)")
