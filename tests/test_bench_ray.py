"""``ctxfold bench --executor ray``: a real local Ray (and a real ``ray start`` cluster) running
bench pairs against the fake OpenAI server over HTTP.

Starting Ray takes about 7 s here; the tests that take over 15 s are marked slow.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import child_pids
from ctxfold.bench import BenchSpec, Instance, load_rows, run_bench
from ctxfold.bench._ray import _remote_one, run_on_ray
from ctxfold.bench.runner import instances
from ctxfold.errors import CtxfoldError
from ctxfold.testing.fake_openai import FakeOpenAIServer

ray = pytest.importorskip("ray")

RAY_BIN = Path(sys.executable).with_name("ray")


def _needle_finder(messages: list[dict[str, Any]]) -> str:
    """Answers S-NIAH over HTTP: with the text pasted (base) or with code (rlm)."""
    text = messages[-1]["content"]
    found = re.search(r"special magic numbers? for [\w-]+ is: (\d+)", text)
    if found:
        return f"The number is {found.group(1)}."
    if "Output" in text:
        return '```python\nanswer["content"] = hits[0]\nanswer["ready"] = True\n```'
    return "```python\nimport re\nhits = re.findall(r'is: (\\d{7})', context)\nprint(hits)\n```"


def _ray_temp_dirs() -> set[Path]:
    return set(Path(os.environ.get("TMPDIR", "/tmp")).glob("ctxfold-ray-*"))


def _started_since(before: set[int]) -> set[int]:
    # Still there once child_pids() returns: not the `ps` it ran.
    return {pid for pid in child_pids() - before if Path(f"/proc/{pid}").exists()}


def _assert_all_gone(before: set[int], timeout: float = 20) -> None:
    """Every process started since ``before`` (Ray's gcs, raylet, workers) has exited."""
    deadline = time.monotonic() + timeout
    while (left := _started_since(before)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left running: {_commands(left)}"


def _commands(pids: set[int]) -> list[str]:
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return out


@pytest.fixture
def no_ray_left() -> Iterator[None]:
    """The test leaves no Ray running in this process, no Ray process and no Ray temp folder."""
    before, dirs = child_pids(), _ray_temp_dirs()
    yield
    assert not ray.is_initialized()
    _assert_all_gone(before)
    assert _ray_temp_dirs() <= dirs, "the local Ray's temp folder was not removed"


class _MeetsAPartner:
    """A reply function whose first call waits (up to a minute) for a second call to arrive
    while it is still in flight: ``met`` says whether two calls ran at once. No timing guess:
    Ray workers start slowly on a loaded machine."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=60)
        self.met = False

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        if not self.barrier.broken and not self.met:
            with contextlib.suppress(threading.BrokenBarrierError):
                self.barrier.wait()
                self.met = True
        return _needle_finder(messages)


def test_pairs_run_in_parallel_on_a_local_ray_and_resume(tmp_path: Path, no_ray_left) -> None:
    out = tmp_path / "results.jsonl"
    reply = _MeetsAPartner()
    with FakeOpenAIServer(reply) as server:
        spec = BenchSpec(
            task="sniah",
            methods=("base", "rlm"),
            lengths=(2000,),
            n=2,
            seed=1,
            model=f"openai:fake@{server.base_url}",
        )
        streamed: list[dict[str, Any]] = []
        rows = run_bench(spec, out, on_row=streamed.append, executor="ray", ray_cpus=2)
        assert reply.met and server.max_in_flight == 2  # two Ray task slots, busy at once
        # A rerun over the same file has nothing to do and does not start Ray.
        assert run_bench(spec, out, executor="ray") == []
    assert streamed == rows and len(rows) == 4
    assert {(r["instance"], r["method"]) for r in rows} == {
        (inst.id, m) for inst in instances(spec) for m in spec.methods
    }
    assert all(r["score"] == 1.0 and r["error"] is None for r in rows), rows
    assert all(r["iterations"] == 2 and r["ready"] for r in rows if r["method"] == "rlm")
    assert all(r["root_input_tokens"] > 0 and r["wall_s"] > 0 for r in rows)
    assert load_rows(out) == rows


class _KillsItsWorker:
    """An input whose unpickling kills the process doing it: the Ray worker of its task."""

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return os._exit, (3,)


def test_failing_pairs_become_error_rows(tmp_path: Path, no_ray_left) -> None:
    with FakeOpenAIServer(_needle_finder) as server:
        spec = BenchSpec(
            task="sniah",
            methods=("base",),
            lengths=(2000,),
            n=1,
            seed=1,
            model=f"openai:fake@{server.base_url}",
        )
        good = next(instances(spec))
        dies = Instance(task="sniah", id="dies", question="q", context=_KillsItsWorker(), gold="1")
        raises = Instance(task="no-such-task", id="raises", question="q", context="x", gold="1")
        todo = [(dies, "base"), (raises, "base"), (good, "base")]
        rows = {r["instance"]: r for r in run_on_ray(spec, todo, None, num_cpus=2)}
    assert rows[good.id]["score"] == 1.0 and rows[good.id]["error"] is None
    assert rows["dies"]["score"] == 0.0 and "WorkerCrashedError" in rows["dies"]["error"]
    assert rows["raises"]["score"] == 0.0 and "no-such-task" in rows["raises"]["error"]
    assert "Traceback" in rows["raises"]["traceback"]
    assert rows["dies"]["model"] == spec.model and rows["dies"]["wall_s"] is None


def test_a_model_that_cannot_be_built_fails_its_pair() -> None:
    """The task body, run here: the model is resolved inside the task, and can fail there."""
    inst = Instance(task="math", id="m", question="q", context="x", gold="1")
    # No ANTHROPIC_API_KEY in the tests' environment.
    row = _remote_one(inst, "base", "anthropic:claude-x", None, 3)
    assert row["score"] == 0.0 and "MissingAPIKeyError" in row["error"], row
    assert row["model"] == row["sub_model"] == "anthropic:claude-x"


def test_model_objects_are_refused(tmp_path: Path) -> None:
    from ctxfold.models import ScriptedModel

    spec = BenchSpec(task="math", methods=("base",), lengths=(1000,), n=1)
    with pytest.raises(CtxfoldError, match="spec strings"):
        run_bench(spec, tmp_path / "r.jsonl", root=ScriptedModel(["x"]), executor="ray")


def _bench_cli(
    server: FakeOpenAIServer, out: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ctxfold",
            "bench",
            "sniah",
            "--methods",
            "base,rlm",
            "--n",
            "2",
            "--lengths",
            "2000",
            "--seed",
            "1",
            "--model",
            f"openai:fake@{server.base_url}",
            "--executor",
            "ray",
            "--out",
            str(out),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )


@pytest.mark.slow
def test_cli_ctrl_c_shuts_ray_down(tmp_path: Path, no_ray_left) -> None:
    out = tmp_path / "bench"
    with FakeOpenAIServer(_needle_finder, latency=60) as server:
        proc = _bench_cli(server, out)
        deadline = time.monotonic() + 60
        while not server.requests and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert server.requests, "no Ray task reached the model"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole group, Ray's processes too
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not (out / "results.jsonl").exists() or not load_rows(out / "results.jsonl")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def ray_cluster(tmp_path: Path) -> Iterator[str]:
    """A one-node cluster started with ``ray start --head`` in its own process group."""
    port = _free_port()
    temp = Path(f"/tmp/ctxfold-test-ray-{os.getpid()}-{port}")  # short: socket paths must fit
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    log = (tmp_path / "head.log").open("w")
    head = subprocess.Popen(
        [
            str(RAY_BIN),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in (tmp_path / "head.log").read_text():
            assert head.poll() is None, (tmp_path / "head.log").read_text()
            assert time.monotonic() < deadline, "ray start did not come up"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
        assert head.poll() is None, "the bench stopped a cluster it did not start"
    finally:
        # Only the process group of the head this fixture started; SIGKILL for what SIGTERM left.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=10)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_existing_cluster_given_by_address(tmp_path: Path, ray_cluster: str) -> None:
    out = tmp_path / "bench"
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # the head uses Ray's default token auth
    with FakeOpenAIServer(_needle_finder, latency=0.5) as server:
        proc = _bench_cli(server, out, "--ray-address", ray_cluster, env=env)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert server.max_in_flight == 2  # the cluster's two CPUs
    rows = load_rows(out / "results.jsonl")
    assert len(rows) == 4 and all(r["score"] == 1.0 for r in rows), rows
    assert "| sniah |" in (out / "report.md").read_text()
    # (the fixture checks the cluster still runs: the bench only disconnected from it)


def test_unreachable_cluster_is_a_clear_error(tmp_path: Path) -> None:
    spec = BenchSpec(task="math", methods=("base",), lengths=(1000,), n=1)
    with pytest.raises(CtxfoldError, match="cannot connect to the Ray cluster"):
        run_bench(
            spec, tmp_path / "r.jsonl", executor="ray", ray_address=f"127.0.0.1:{_free_port()}"
        )
    assert not ray.is_initialized()
