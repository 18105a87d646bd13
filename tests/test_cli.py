"""The command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import worker_children
from ctxfold.cli import main
from ctxfold.testing.fake_openai import FakeOpenAIServer


def ctxfold(
    *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctxfold", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _reply(messages: list[dict]) -> str:
    if "Output:" in messages[-1]["content"]:
        return '```python\nanswer["content"] = "the answer"\nanswer["ready"] = True\n```'
    return "```python\nprint(len(context))\n```"


def test_ask_prints_the_answer(tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("some text\n" * 100)
    with FakeOpenAIServer(_reply) as server:
        proc = ctxfold("ask", "q?", "--context", str(doc), "--model", f"openai:m@{server.base_url}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "the answer"
    assert proc.stderr == ""  # no progress when stderr is not a terminal


def test_ask_json_from_stdin_with_trace(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    with FakeOpenAIServer(_reply) as server:
        proc = ctxfold(
            "ask",
            "q?",
            "--context",
            "-",
            "--model",
            f"openai:m@{server.base_url}",
            "--json",
            "--trace",
            str(trace),
            stdin="hello from stdin",
        )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["answer"] == "the answer" and out["ready"] is True
    assert out["usage"]["root"]["calls"] == 2
    cells = [json.loads(line) for line in trace.read_text().splitlines()]
    assert any(e["type"] == "cell" and e["stdout"].strip() == "16" for e in cells)


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cases = [
        (
            "ask",
            "q",
            "--context",
            str(tmp_path / "missing.txt"),
            "--model",
            "openai:x@http://127.0.0.1:9/v1",
        ),
        ("ask", "q", "--model", "nonsense:model"),
        ("ask", "q", "--model", "openai:gpt-5-mini"),
        ("ask", "q", "--max-iterations", "zero"),
        ("ask", "q", "--max-iterations", "0", "--model", "openai:x@http://127.0.0.1:9/v1"),
        ("frobnicate",),
    ]
    env_free = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    for args in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "ctxfold", *args],
            capture_output=True,
            text=True,
            env=env_free,
            timeout=60,
        )
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ctxfold: error:"), (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_bench_ray_cpus_is_checked_before_anything_runs(tmp_path: Path) -> None:
    out = str(tmp_path / "bench")
    cases = [
        (("--executor", "ray", "--ray-cpus", "0"), "--ray-cpus must be 1 or more"),
        (("--executor", "ray", "--ray-cpus", "-3"), "--ray-cpus must be 1 or more"),
        (("--executor", "ray", "--ray-cpus", "two"), "--ray-cpus: invalid int value"),
        (("--ray-cpus", "2"), "--ray-cpus goes with --executor ray"),
        (("--executor", "local", "--ray-cpus", "2"), "--ray-cpus goes with --executor ray"),
        (
            ("--executor", "ray", "--ray-address", "127.0.0.1:9", "--ray-cpus", "2"),
            "a cluster given by --ray-address uses its own CPUs",
        ),
    ]
    for extra, message in cases:
        proc = ctxfold("bench", "math", "--n", "1", "--lengths", "1000", "--out", out, *extra)
        assert proc.returncode == 2, (extra, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ctxfold: error:"), (extra, proc.stderr)
        assert message in lines[0], (extra, proc.stderr)
    assert not (tmp_path / "bench").exists()


def test_bench_perf_takes_its_repeats_from_n(monkeypatch) -> None:
    proc = ctxfold("bench", "perf", "--n", "0")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "ctxfold: error: --n (the repeats of perf) must be at least 1"
    )
    seen: dict[str, int] = {}

    class _Report:
        def to_markdown(self) -> str:
            return "table"

    def fake_perf(*, repeats: int) -> _Report:
        seen["repeats"] = repeats
        return _Report()

    monkeypatch.setattr("ctxfold.bench.perf.run_perf", fake_perf)
    assert main(["bench", "perf", "--n", "20"]) == 0
    assert seen == {"repeats": 20}


def test_bench_ray_cpus_reaches_run_bench(tmp_path: Path, monkeypatch) -> None:
    """In process, with ``run_bench`` replaced: no Ray is started."""
    import ctxfold.bench
    from ctxfold.cli import main

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def fake_run_bench(spec: object, out: Path, **kwargs: object) -> None:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(ctxfold.bench, "run_bench", fake_run_bench)
    args = ["bench", "math", "--n", "1", "--lengths", "1000", "--out", str(tmp_path), "-q"]
    with pytest.raises(Stop):
        main([*args, "--executor", "ray", "--ray-cpus", "3"])
    assert seen["executor"] == "ray" and seen["ray_cpus"] == 3
    with pytest.raises(Stop):
        main([*args, "--executor", "ray"])
    assert seen["ray_cpus"] is None


def test_binary_stdin_is_refused() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ctxfold",
            "ask",
            "q",
            "--context",
            "-",
            "--model",
            "openai:x@http://127.0.0.1:9/v1",
        ],
        input=b"\xff\xfe\x00binary",
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert b"not UTF-8" in proc.stderr


def test_ctrl_c_flushes_trace_and_exits_130(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    workers_before = _workers()
    slow = '```python\nimport time\nprint("start", flush=True)\ntime.sleep(60)\n```'
    with FakeOpenAIServer(lambda m: slow) as server:
        doc = tmp_path / "doc.txt"
        doc.write_text("data")
        proc = _running_a_cell(
            [
                sys.executable,
                "-X",
                "faulthandler",  # so a hang below can be shown: SIGABRT dumps every thread
                "-m",
                "ctxfold",
                "ask",
                "q",
                "--context",
                str(doc),
                "--model",
                f"openai:m@{server.base_url}",
                "--trace",
                str(trace),
            ],
            trace,
        )
        ours = _workers() - workers_before
        assert ours, "the run's sandbox worker was not seen"
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"the CLI did not exit within 30 s of SIGINT; its threads:\n{err}")
    assert proc.returncode == 130, err
    events = [json.loads(line)["type"] for line in trace.read_text().splitlines()]
    assert events[0] == "run_start" and events[-1] == "run_end"
    ends = [json.loads(line) for line in trace.read_text().splitlines()][-1]
    assert ends["stop_reason"] == "interrupted"
    time.sleep(0.2)
    assert not (_workers() & ours), "the interrupted run left its worker behind"


def _running_a_cell(command: list[str], trace: Path) -> subprocess.Popen[str]:
    """``command`` started, once the trace shows its first root reply and its cell has had time
    to start."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if trace.exists() and '"type": "root_response"' in trace.read_text():
            break
        time.sleep(0.05)
    time.sleep(0.5)  # let the cell start
    return proc


def _workers() -> set[int]:
    return worker_children()


ELSEWHERE = """
import signal, sys, threading, time
import ctxfold
# The one thread that may take SIGINT: made before the main thread blocks it, so it alone
# inherits it unblocked. A signal taken there interrupts no wait of the main thread.
threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
try:
    ctxfold.RLM(model=sys.argv[1]).run("q", context="data", trace=sys.argv[2])
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_ctrl_c_taken_by_another_thread_still_stops_a_long_cell(tmp_path: Path) -> None:
    # Linux gives a process's signal to any thread not blocking it. Python runs the handler
    # (KeyboardInterrupt) in the main thread, but only once that thread runs Python code: the
    # host's wait for a cell must not block for the whole cell.
    trace = tmp_path / "t.jsonl"
    slow = '```python\nimport time\nprint("start", flush=True)\ntime.sleep(60)\n```'
    with FakeOpenAIServer(lambda m: slow) as server:
        spec = f"openai:m@{server.base_url}"
        proc = _running_a_cell([sys.executable, "-c", ELSEWHERE, spec, str(trace)], trace)
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("the run did not stop within 30 s of SIGINT (its cell sleeps 60 s)")
    assert out.strip() == "interrupted", err


def test_bench_list_names_every_task_and_method() -> None:
    from ctxfold.bench import METHODS
    from ctxfold.bench.tasks import TASKS

    proc = ctxfold("bench", "--list")
    assert proc.returncode == 0, proc.stderr
    listed = {tuple(line.split()[:2]) for line in proc.stdout.splitlines()}
    assert {("task", name) for name in TASKS} <= listed
    assert {("method", name) for name in METHODS} <= listed
    assert all(len(line.split(maxsplit=2)) == 3 for line in proc.stdout.splitlines())


def test_usage_errors_point_at_the_right_help() -> None:
    top = ctxfold("frobnicate", "x")  # not a verb
    assert top.returncode == 2 and top.stderr.endswith("(see 'ctxfold -h')\n")
    verb = ctxfold("ask")
    assert verb.returncode == 2 and verb.stderr.endswith("(see 'ctxfold ask -h')\n")
    bench = ctxfold("bench")
    assert bench.returncode == 2 and "ctxfold bench --list" in bench.stderr


def test_a_new_verb_is_one_new_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ctxfold.cli

    (tmp_path / "hello.py").write_text(
        "def register(verbs):\n"
        "    verbs.add_parser('hello').set_defaults(run=lambda args: print('hi') or 0)\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(ctxfold.cli, "__path__", [*ctxfold.cli.__path__, str(tmp_path)])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "ctxfold.cli.hello", __import__("hello"))
    assert ctxfold.cli.main(["hello"]) == 0
