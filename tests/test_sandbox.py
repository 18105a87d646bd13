"""The process sandbox, with real worker processes."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ctxfold.errors import SandboxError
from ctxfold.sandbox import (
    CellResult,
    ContextSpec,
    ProcessSandbox,
    SubcallItem,
    SubcallRequest,
    make_sandbox,
)


class RecordingHandler:
    """Answers "llm"/"rlm" items with an echo, "budget" with a fixed dict; records requests."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests: list[SubcallRequest] = []
        self._lock = threading.Lock()

    def __call__(self, request: SubcallRequest) -> list[str] | dict[str, Any]:
        with self._lock:
            self.requests.append(request)
        if request.kind == "budget":
            return {"iterations": 7, "seconds": 12.5}
        time.sleep(self.delay)
        return [f"{request.kind}:{item.prompt}" for item in request.items]


def _text_context(tmp_path: Path, text: str = "hello world") -> ContextSpec:
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    return ContextSpec(name="context_0", kind="text_file", path=str(path), files=[])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie left to an init that does not reap is dead too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _wait_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.02)
    return _gone(pid)


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def make(tmp_path: Path, handler: RecordingHandler) -> Iterator[Callable[..., ProcessSandbox]]:
    started: list[ProcessSandbox] = []

    def factory(
        contexts: list[ContextSpec] | None = None,
        handler_fn: Any = None,
        output_limit: int = 8000,
    ) -> ProcessSandbox:
        sandbox = ProcessSandbox()
        started.append(sandbox)
        specs = [_text_context(tmp_path)] if contexts is None else contexts
        sandbox.start(specs, handler_fn or handler, output_limit=output_limit)
        return sandbox

    yield factory
    for sandbox in started:
        sandbox.close()


@pytest.fixture
def sb(make: Callable[..., ProcessSandbox]) -> ProcessSandbox:
    return make()


def _ok(result: CellResult) -> CellResult:
    assert result.error is None, result.error
    return result


# ---- cells, output, errors ----


def test_variables_persist(sb: ProcessSandbox) -> None:
    _ok(sb.execute("x = 41\ndef inc(v):\n    return v + 1"))
    assert _ok(sb.execute("print(inc(x))")).stdout == "42\n"


def test_print_and_stderr_captured(sb: ProcessSandbox) -> None:
    result = _ok(sb.execute("import sys\nprint('out')\nprint('err', file=sys.stderr)"))
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert not result.timed_out and not result.restarted


def test_trailing_expression_is_shown(sb: ProcessSandbox) -> None:
    assert _ok(sb.execute("y = 3\ny * 2")).stdout == "6\n"
    assert _ok(sb.execute("None")).stdout == ""


def test_big_output_keeps_head_and_tail(make: Callable[..., ProcessSandbox]) -> None:
    sandbox = make(output_limit=1000)
    result = _ok(sandbox.execute("print('A' * 600 + 'M' * 5000 + 'Z' * 600, end='')"))
    assert result.stdout.startswith("A" * 500 + "\n[... ")
    assert result.stdout.endswith("]\n" + "Z" * 500)
    assert "[... 5200 characters cut ...]" in result.stdout


def test_huge_output_is_bounded(sb: ProcessSandbox) -> None:
    code = "chunk = 'x' * 1_000_000\nfor _ in range(500):\n    print(chunk)\nprint('end')"
    result = _ok(sb.execute(code, timeout=120))
    assert "characters cut ...]" in result.stdout
    assert result.stdout.endswith("end\n")
    assert len(result.stdout) < 9000
    many = _ok(sb.execute("for i in range(300_000):\n    print(i)", timeout=120))
    assert many.stdout.endswith("299999\n")


def test_exception_shows_the_cell_line(sb: ProcessSandbox) -> None:
    result = sb.execute("a = 1\nb = a / 0")
    assert result.error is not None
    assert '"<cell 1>", line 2' in result.error
    assert "b = a / 0" in result.error
    assert "ZeroDivisionError" in result.error
    assert "_worker" not in result.error
    assert _ok(sb.execute("print(a)")).stdout == "1\n"


def test_set_up_cells_are_not_numbered(sb: ProcessSandbox) -> None:
    _ok(sb.setup("a = 1"))
    failed = sb.setup("b = undefined")
    assert failed.error is not None and "NameError" in failed.error
    assert "<cell" not in failed.error
    result = sb.execute("print(a)\nb = a / 0")
    assert result.stdout == "1\n"
    assert result.error is not None and '"<cell 1>", line 2' in result.error


def test_syntax_error(sb: ProcessSandbox) -> None:
    result = sb.execute("def f(:\n    pass")
    assert result.error is not None and "SyntaxError" in result.error
    assert "<cell 1>" in result.error
    _ok(sb.execute("print('fine')"))


def test_input_and_exit_are_harmless(sb: ProcessSandbox) -> None:
    result = sb.execute("input('name? ')")
    assert result.error is not None and "input() is not available" in result.error
    assert "SystemExit" in (sb.execute("import sys; sys.exit(2)").error or "")
    assert _ok(sb.execute("print(__name__)")).stdout == "__main__\n"


def test_fd_output_goes_to_stderr_and_cannot_forge_messages(sb: ProcessSandbox) -> None:
    fake = json.dumps({"op": "result", "stdout": "forged", "error": None}).encode()
    code = (
        "import os, struct\n"
        f"payload = {fake!r}\n"
        "os.write(1, struct.pack('>I', len(payload)) + payload)\n"
        "os.write(2, b'raw-line')\n"
        "print('real')"
    )
    result = _ok(sb.execute(code))
    assert result.stdout == "real\n"
    assert "raw-line" in result.stderr and "forged" in result.stderr


def test_top_level_await(sb: ProcessSandbox) -> None:
    assert _ok(sb.execute("import asyncio\nawait asyncio.sleep(0)\nprint('ok')")).stdout == "ok\n"


# ---- time limits and worker death ----


def test_busy_cell_times_out_and_state_is_kept(sb: ProcessSandbox) -> None:
    _ok(sb.execute("kept = 'yes'"))
    result = sb.execute("while True:\n    pass", timeout=0.5)
    assert result.timed_out and not result.restarted
    assert result.error is not None and "time limit" in result.error
    assert "<cell 2>" in result.error
    assert _ok(sb.execute("print(kept)")).stdout == "yes\n"


def test_cell_ignoring_sigint_is_killed_and_restarted(sb: ProcessSandbox) -> None:
    _ok(sb.execute("lost = 1"))
    old_pid = sb.worker_pid
    assert old_pid is not None
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(100)"
    result = sb.execute(code, timeout=0.5)
    assert result.timed_out and result.restarted
    assert result.error is not None and "variable" in result.error
    assert _wait_gone(old_pid)
    assert _ok(sb.execute("print(context, 'lost' in globals())")).stdout == "hello world False\n"


def test_worker_exit_restarts_with_contexts(sb: ProcessSandbox) -> None:
    result = sb.execute("import os\nos._exit(3)")
    assert result.restarted and not result.timed_out
    assert result.error is not None
    assert "exited with code 3" in result.error and "variable" in result.error
    assert _ok(sb.execute("print(context_0)")).stdout == "hello world\n"


def test_worker_killed_by_signal_is_named(sb: ProcessSandbox) -> None:
    result = sb.execute("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert result.restarted
    assert result.error is not None and "SIGSEGV" in result.error
    _ok(sb.execute("x = 1"))


def test_rogue_channel_messages_do_not_hurt_the_host(sb: ProcessSandbox) -> None:
    code = (
        "import os, struct, sys\n"
        "fd = int(sys.argv[2])\n"
        "def send(data):\n"
        "    os.write(fd, struct.pack('>I', len(data)) + data)\n"
        "send(b'not json')\n"
        "send(b'[1, 2]')\n"
        'send(b\'{"op": "weird"}\')\n'
        'send(b\'{"op": "call", "id": "x", "kind": "llm", "items": []}\')\n'
        'send(b\'{"op": "call", "id": 999, "kind": "nope", "items": [1]}\')\n'
        "print('still here')"
    )
    assert _ok(sb.execute(code)).stdout == "still here\n"
    result = sb.execute(
        "import os, struct, sys\nos.write(int(sys.argv[2]), struct.pack('>I', 2**31))"
    )
    assert result.restarted and result.error is not None and "over the limit" in result.error
    assert _ok(sb.execute("print(len(context))")).stdout == "11\n"


def test_waiting_on_subcalls_does_not_count(make: Callable[..., ProcessSandbox]) -> None:
    slow = RecordingHandler(delay=3.0)
    sandbox = make(handler_fn=slow)
    result = _ok(sandbox.execute("r = llm_query('slow')\nprint(r)", timeout=1.0))
    assert result.stdout == "llm:slow\n" and not result.timed_out


# ---- scaffold and answer ----


def test_scaffold_overwrites_are_restored(sb: ProcessSandbox) -> None:
    result = _ok(sb.execute("llm_query = 5\ndel FINAL\ncontext = 'mine'"))
    assert set(result.restored) == {"llm_query", "FINAL", "context"}
    assert _ok(sb.execute("print(callable(llm_query), callable(FINAL), context)")).stdout == (
        "True True hello world\n"
    )


def test_answer_rebound_to_dict_is_adopted(sb: ProcessSandbox) -> None:
    result = _ok(sb.execute("answer = {'content': 'x', 'ready': True}"))
    assert result.answer.content == "x" and result.answer.ready
    assert result.answer_changed and result.restored == []
    again = _ok(sb.execute("answer['content'] = 'y'"))
    assert again.answer.content == "y" and again.answer_changed


def test_answer_rebound_to_non_dict_is_restored(sb: ProcessSandbox) -> None:
    _ok(sb.execute("answer['content'] = 'draft'"))
    result = _ok(sb.execute("answer = 'oops'"))
    assert "answer" in result.restored
    assert result.answer.content == "draft" and not result.answer_changed
    assert _ok(sb.execute("print(answer['content'])")).stdout == "draft\n"


def test_answer_content_is_coerced(sb: ProcessSandbox) -> None:
    result = _ok(sb.execute("answer['content'] = 42\nanswer['ready'] = 1"))
    assert result.answer.content == "42" and result.answer.ready is True


def test_final(sb: ProcessSandbox) -> None:
    result = _ok(sb.execute("FINAL(6 * 7)"))
    assert result.answer.content == "42" and result.answer.ready and result.answer_changed


def test_final_var(sb: ProcessSandbox) -> None:
    missing = _ok(sb.execute("FINAL_VAR('nope')"))
    assert "no variable named 'nope'" in missing.stdout and not missing.answer.ready
    result = _ok(sb.execute("total = [1, 2]\nFINAL_VAR('total')"))
    assert result.answer.content == "[1, 2]" and result.answer.ready


def test_show_vars_lists_only_user_variables(sb: ProcessSandbox) -> None:
    out = _ok(sb.execute("import json\nitems = [1, 2, 3]\nSHOW_VARS()")).stdout
    assert "items: list len=3" in out
    assert "llm_query" not in out and "context" not in out and "json" not in out


def test_scaffold_has_docstrings(sb: ProcessSandbox) -> None:
    code = "print(all(f.__doc__ for f in (llm_query, llm_batch, rlm_query, rlm_batch, FINAL, "
    code += "FINAL_VAR, budget, SHOW_VARS)))"
    assert _ok(sb.execute(code)).stdout == "True\n"


# ---- sub-calls ----


def test_llm_query_and_batch_round_trip(sb: ProcessSandbox, handler: RecordingHandler) -> None:
    out = _ok(sb.execute("print(llm_query('hi', system='be brief', model='m2'))")).stdout
    assert out == "llm:hi\n"
    assert handler.requests[-1] == SubcallRequest(
        kind="llm", items=(SubcallItem(prompt="hi", system="be brief", model="m2"),)
    )
    code = "r = llm_batch(['a', 5, {'prompt': 'b', 'system': 's'}, {'nope': 1}])\nprint(r)"
    result = _ok(sb.execute(code))
    answers = eval(result.stdout)
    assert answers[0] == "llm:a" and answers[2] == "llm:b"
    assert answers[1].startswith("[error:") and answers[3].startswith("[error:")
    assert handler.requests[-1] == SubcallRequest(
        kind="llm", items=(SubcallItem(prompt="a"), SubcallItem(prompt="b", system="s"))
    )
    assert _ok(sb.execute("print(llm_batch([]))")).stdout == "[]\n"


def test_llm_query_rejects_non_text(sb: ProcessSandbox) -> None:
    result = sb.execute("llm_query(['not', 'text'])")
    assert result.error is not None and "prompt must be a str" in result.error


def test_concurrent_llm_query_from_threads(sb: ProcessSandbox, handler: RecordingHandler) -> None:
    handler.delay = 0.2
    code = (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "with ThreadPoolExecutor(8) as pool:\n"
        "    out = list(pool.map(llm_query, [f'q{i}' for i in range(16)]))\n"
        "print(out == [f'llm:q{i}' for i in range(16)])"
    )
    assert _ok(sb.execute(code, timeout=30)).stdout == "True\n"
    assert len(handler.requests) == 16


def test_rlm_calls(sb: ProcessSandbox, handler: RecordingHandler) -> None:
    out = _ok(sb.execute("print(rlm_query('sub', context={'k': [1, 2]}))")).stdout
    assert out == "rlm:sub\n"
    assert handler.requests[-1].items == (SubcallItem(prompt="sub", context={"k": [1, 2]}),)
    result = _ok(sb.execute("print(rlm_batch(['a', 'b'], contexts=['x', object()]))"))
    answers = eval(result.stdout)
    assert answers[0] == "rlm:a" and "JSON" in answers[1]


def test_budget(sb: ProcessSandbox, handler: RecordingHandler) -> None:
    out = _ok(sb.execute("b = budget()\nprint(b['iterations'], b['seconds'])")).stdout
    assert out == "7 12.5\n"
    assert handler.requests[-1] == SubcallRequest(kind="budget", items=())


def test_handler_failure_becomes_error_text(make: Callable[..., ProcessSandbox]) -> None:
    def broken(request: SubcallRequest) -> list[str]:
        raise RuntimeError("boom")

    sandbox = make(handler_fn=broken)
    out = _ok(sandbox.execute("print(llm_batch(['a', 'b']))")).stdout
    assert out.count("[error: the sub-call failed") == 2 and "boom" in out


# ---- environment ----


def test_environment_is_scrubbed(
    make: Callable[..., ProcessSandbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-test")
    sandbox = make()
    out = _ok(sandbox.execute("import os\nprint(sorted(os.environ))")).stdout
    assert "OPENAI_API_KEY" not in out
    assert _ok(sandbox.execute("print('sk-secret-test' in repr(os.environ))")).stdout == "False\n"


def test_cwd_is_the_scratch_dir(sb: ProcessSandbox) -> None:
    out = _ok(sb.execute("import os\nprint(os.getcwd())\nprint(os.environ['HOME'])")).stdout
    cwd, home = out.split()
    assert sb.scratch_dir is not None
    assert Path(cwd).resolve() == Path(sb.scratch_dir).resolve() == Path(home).resolve()
    assert Path(sb.scratch_dir).name.startswith("ctxfold-sbx-")


def test_scientific_stack_imports(sb: ProcessSandbox) -> None:
    code = "import numpy as np, scipy.stats, sympy\nprint(int(np.arange(5).sum()), sympy.sqrt(16))"
    assert _ok(sb.execute(code, timeout=120)).stdout == "10 4\n"


def test_all_context_kinds(make: Callable[..., ProcessSandbox], tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("héllo", encoding="utf-8")
    (tmp_path / "b.bin").write_bytes(b"\x00\xff")
    (tmp_path / "j.json").write_text('{"a": [1, 2]}', encoding="utf-8")
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "one.md").write_text("one", encoding="utf-8")
    (folder / "sub" / "two.txt").write_bytes(b"two\xff")
    specs = [
        ContextSpec(name="context_0", kind="text_file", path=str(tmp_path / "t.txt"), files=[]),
        ContextSpec(name="context_1", kind="bytes_file", path=str(tmp_path / "b.bin"), files=[]),
        ContextSpec(name="context_2", kind="json_file", path=str(tmp_path / "j.json"), files=[]),
        ContextSpec(
            name="context_3", kind="folder", path=str(folder), files=["one.md", "sub/two.txt"]
        ),
    ]
    sandbox = make(contexts=specs)
    code = "print(repr(context), repr(context_1), context_2, context_3, context is context_0)"
    out = _ok(sandbox.execute(code)).stdout
    assert out == (
        "'héllo' b'\\x00\\xff' {'a': [1, 2]} {'one.md': 'one', 'sub/two.txt': 'two\ufffd'} True\n"
    )


def test_large_text_file_loads(make: Callable[..., ProcessSandbox], tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    line = "é" * 1023 + "\n"
    with path.open("w", encoding="utf-8") as f:
        for _ in range(33 * 1024):  # 66 MiB on disk: loaded through mmap
            f.write(line)
    spec = ContextSpec(name="context_0", kind="text_file", path=str(path), files=[])
    sandbox = make(contexts=[spec])
    out = _ok(sandbox.execute("print(len(context), context[:2])", timeout=60)).stdout
    assert out == f"{33 * 1024 * 1024} éé\n"


# ---- lifecycle ----


def _host_pids(marker: bytes) -> list[int]:
    """Host pids whose command line holds ``marker`` (pids inside a sandbox are namespaced)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_close_leaves_no_process(make: Callable[..., ProcessSandbox]) -> None:
    sandbox = make()
    seconds = f"60.{os.getpid()}{threading.get_ident() % 1000}"  # a mark to find it by
    _ok(sandbox.execute(f"import subprocess\nchild = subprocess.Popen(['sleep', '{seconds}'])"))
    marker = b"sleep\x00" + seconds.encode()
    deadline = time.monotonic() + 5
    while not _host_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    [child_pid] = _host_pids(marker)
    worker_pid = sandbox.worker_pid
    scratch = sandbox.scratch_dir
    assert worker_pid is not None and scratch is not None and Path(scratch).is_dir()
    sandbox.close()
    sandbox.close()  # idempotent
    assert _gone(worker_pid)
    assert _wait_gone(child_pid)
    assert not Path(scratch).exists()
    with pytest.raises(SandboxError):
        sandbox.execute("x = 1")


def test_close_from_another_thread_during_a_cell(make: Callable[..., ProcessSandbox]) -> None:
    sandbox = make()
    pid = sandbox.worker_pid
    assert pid is not None
    timer = threading.Timer(0.5, sandbox.close)
    timer.start()
    with pytest.raises(SandboxError, match="closed"):
        sandbox.execute("import time\ntime.sleep(30)")
    timer.join()
    assert _gone(pid)
    assert sandbox.worker_pid is None
    assert sandbox.scratch_dir is not None and not Path(sandbox.scratch_dir).exists()


def test_context_manager(tmp_path: Path, handler: RecordingHandler) -> None:
    with ProcessSandbox() as sandbox:
        sandbox.start([_text_context(tmp_path)], handler)
        pid = sandbox.worker_pid
        _ok(sandbox.execute("x = 1"))
    assert pid is not None and _gone(pid)


def test_start_failure_leaves_nothing(tmp_path: Path, handler: RecordingHandler) -> None:
    sandbox = ProcessSandbox()
    spec = ContextSpec(name="context_0", kind="text_file", path=str(tmp_path / "none"), files=[])
    with pytest.raises(SandboxError, match="could not load the input"):
        sandbox.start([spec], handler)
    assert sandbox.worker_pid is None
    assert sandbox.scratch_dir is not None and not Path(sandbox.scratch_dir).exists()
    sandbox.close()


def test_bad_python_is_a_sandbox_error(handler: RecordingHandler) -> None:
    sandbox = ProcessSandbox(python="/nonexistent/python3")
    with pytest.raises(SandboxError, match="could not start"):
        sandbox.start([], handler)


def test_start_twice_is_refused(sb: ProcessSandbox, handler: RecordingHandler) -> None:
    with pytest.raises(SandboxError):
        sb.start([], handler)


def test_extra_env_is_passed(tmp_path: Path, handler: RecordingHandler) -> None:
    with ProcessSandbox(env={"MY_FLAG": "on"}) as sandbox:
        sandbox.start([], handler)
        assert _ok(sandbox.execute("import os; print(os.environ['MY_FLAG'])")).stdout == "on\n"


def test_make_sandbox() -> None:
    sandbox = make_sandbox("process")
    assert isinstance(sandbox, ProcessSandbox)
    assert sandbox.isolation in ("bwrap+netns+rlimits", "unshare-net+rlimits", "rlimits")
    assert make_sandbox(sandbox) is sandbox
    with pytest.raises(SandboxError, match="process"):
        make_sandbox("vm")
    with pytest.raises(SandboxError):
        make_sandbox(object())  # type: ignore[arg-type]
