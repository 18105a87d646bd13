"""The isolation levels themselves: detection, limits, options, fallbacks, host death."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ctxfold.errors import SandboxError
from ctxfold.sandbox import IsolationWarning, ProcessSandbox, _isolation

from .attack_helpers import echo_handler, host_pids, host_pids_with_env, wait_until

_LEVELS = ("bwrap+netns+rlimits", "unshare-net+rlimits", "rlimits")
_WORLD_READABLE_PYTHON = "/usr/bin/python3"  # a system interpreter, outside /root


@pytest.fixture
def forced_level(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Pretends this machine allows only ``level`` (the probe's cache is left alone)."""

    def force(level: str) -> None:
        if level == _isolation.UNSHARE:
            unshare = shutil.which("unshare")
            if unshare is None or subprocess.run([unshare, "--net", "true"]).returncode != 0:
                pytest.skip("unshare --net does not work here")
            monkeypatch.setattr(_isolation, "_best", lambda: (level, (unshare, "--net", "--")))
        else:
            monkeypatch.setattr(_isolation, "_best", lambda: (level, ()))

    return force


_PROBE_CACHES = (_isolation._best, _isolation._warn_once)  # the real ones, even when patched


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    """Forget what was probed and warned, before and after the test."""
    for cached in _PROBE_CACHES:
        cached.cache_clear()
    yield
    for cached in _PROBE_CACHES:
        cached.cache_clear()


def test_default_level_is_reported(make_sandbox: Callable[..., ProcessSandbox]) -> None:
    sandbox = make_sandbox()
    assert sandbox.isolation in _LEVELS
    if shutil.which("bwrap"):
        print(f"isolation here: {sandbox.isolation}")


def test_limits_are_set_before_model_code(make_sandbox: Callable[..., ProcessSandbox]) -> None:
    sandbox = make_sandbox(memory_mb=1536, cpu_seconds=900, max_processes=64, max_file_mb=32)
    result = sandbox.execute(
        "import resource as r\n"
        "for name in ('AS', 'CPU', 'NPROC', 'FSIZE', 'NOFILE', 'CORE'):\n"
        "    print(name, *r.getrlimit(getattr(r, 'RLIMIT_' + name)))"
    )
    assert result.error is None, result.error
    limits = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    # Under bubblewrap the RAM-backed scratch (1536 // 8), /tmp and /dev/shm (1536 // 16 each)
    # are counted within memory_mb; the address space gets the rest.
    in_ram = 192 + 2 * 96 if sandbox.isolation.startswith("bwrap") else 0
    assert limits["AS"] == [str((1536 - in_ram) * 2**20)] * 2
    assert limits["CPU"] == ["900", "905"]
    assert limits["FSIZE"] == [str(32 * 2**20)] * 2
    assert limits["NOFILE"] == ["1024", "1024"]
    assert limits["CORE"] == ["0", "0"]
    assert int(limits["NPROC"][0]) >= 64
    raised = sandbox.execute(
        "import resource as r\nr.setrlimit(r.RLIMIT_AS, (r.RLIM_INFINITY, r.RLIM_INFINITY))"
    )
    if sandbox.isolation.startswith("bwrap") or os.geteuid() != 0:
        assert raised.error is not None  # hard limits cannot be raised again


def test_worker_does_not_run_as_root(make_sandbox: Callable[..., ProcessSandbox]) -> None:
    if os.geteuid() != 0:
        pytest.skip("the host is not root")
    sandbox, other = make_sandbox(), make_sandbox()
    uids = [
        s.execute("import os\nprint(os.getuid(), os.geteuid(), os.getgroups())").stdout
        for s in (sandbox, other)
    ]
    if not sandbox.isolation.startswith("bwrap"):
        pytest.skip("without bubblewrap the drop depends on the interpreter's location")
    for line in uids:
        uid, euid, groups = line.split(maxsplit=2)
        assert uid == euid != "0" and groups.strip() == "[]"
    assert uids[0] != uids[1]  # each sandbox has a uid of its own


def test_channel_fds_survive_the_wrapper(make_sandbox: Callable[..., ProcessSandbox]) -> None:
    sandbox = make_sandbox()
    result = sandbox.execute(
        "import os, stat, sys\n"
        "fds = [int(a) for a in sys.argv[1:3]]\n"
        "print([stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in fds], os.get_inheritable(fds[0]))"
    )
    assert result.stdout == "[True, True] False\n"


def test_isolate_false_is_unconfined(make_sandbox: Callable[..., ProcessSandbox]) -> None:
    sandbox = make_sandbox(isolate=False)
    assert sandbox.isolation == "none"
    result = sandbox.execute("import resource as r\nprint(r.getrlimit(r.RLIMIT_AS)[0] == -1)")
    assert result.stdout == "True\n"


def test_isolate_true_needs_bubblewrap(forced_level: Callable[[str], None]) -> None:
    forced_level(_isolation.RLIMITS)
    with pytest.raises(SandboxError, match="bubblewrap"):
        ProcessSandbox(isolate=True)


@pytest.mark.parametrize("option", ["memory_mb", "cpu_seconds", "max_processes", "max_file_mb"])
@pytest.mark.parametrize("value", [0, -5, 1.5, True])
def test_limit_options_are_checked(option: str, value: object) -> None:
    with pytest.raises(SandboxError, match=option):
        ProcessSandbox(**{option: value})  # type: ignore[arg-type]


def test_missing_bwrap_falls_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, fresh_probe: None
) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        _isolation.shutil, "which", lambda name: None if name == "bwrap" else real_which(name)
    )
    with pytest.warns(IsolationWarning, match="bubblewrap") as caught:
        first = ProcessSandbox()
        second = ProcessSandbox()
    assert first.isolation == second.isolation in ("unshare-net+rlimits", "rlimits")
    assert len([w for w in caught if "bubblewrap" in str(w.message)]) == 1


@pytest.mark.parametrize("level", [_isolation.UNSHARE, _isolation.RLIMITS])
def test_fallback_levels_with_a_world_readable_python(
    forced_level: Callable[[str], None],
    make_sandbox: Callable[..., ProcessSandbox],
    tcp_server: object,
    level: str,
) -> None:
    if os.geteuid() != 0 or not Path(_WORLD_READABLE_PYTHON).exists():
        pytest.skip("needs a root host and a system python3")
    forced_level(level)
    sandbox = make_sandbox(python=_WORLD_READABLE_PYTHON)
    assert sandbox.isolation == level
    host = os.getpid()
    result = sandbox.execute(
        "import os\n"
        "print(os.getuid())\n"
        "for attack in (lambda: os.kill(HOST, 0), lambda: open(f'/proc/{HOST}/environ').read(),\n"
        "               lambda: open('/etc/shadow').read(), lambda: open('/root/x', 'w')):\n"
        "    try:\n"
        "        attack()\n"
        "        print('reached')\n"
        "    except OSError as exc:\n"
        "        print(type(exc).__name__)".replace("HOST", str(host))
    )
    uid, *outcomes = result.stdout.split()
    assert uid != "0"
    assert outcomes == ["PermissionError"] * 4
    seconds = f"1000.{secrets.randbelow(10**8)}"
    sandbox.execute(f"import subprocess\nsubprocess.Popen(['setsid', 'sleep', '{seconds}'])")
    marker = b"sleep\0" + seconds.encode()
    assert wait_until(lambda: bool(host_pids(marker)))
    sandbox.close()
    assert wait_until(lambda: not host_pids(marker))  # killed by uid: it had left the group


def test_fallback_keeps_root_when_the_interpreter_is_private(
    forced_level: Callable[[str], None],
    make_sandbox: Callable[..., ProcessSandbox],
    fresh_probe: None,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs a root host")
    forced_level(_isolation.RLIMITS)
    if _isolation._open_to_all(sys.executable):
        pytest.skip("this interpreter is world-readable")
    with pytest.warns(IsolationWarning, match="runs as root"):
        sandbox = make_sandbox()
    assert sandbox.execute("import os\nprint(os.getuid())").stdout == "0\n"


def test_worker_dies_with_a_killed_host(tmp_path: Path) -> None:
    token = f"ctxfold-host-{secrets.token_hex(8)}"
    script = tmp_path / "host.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from ctxfold.sandbox import ProcessSandbox
            sandbox = ProcessSandbox(env={{"CTXFOLD_TEST_MARK": {token!r}}})
            sandbox.start([], lambda request: [])
            sandbox.execute("import subprocess\\nsubprocess.Popen(['sleep', '1000'])")
            print("ready", flush=True)
            time.sleep(1000)
            """
        ),
        encoding="utf-8",
    )
    host = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert host.stdout is not None and host.stdout.readline().strip() == b"ready"
        assert host_pids_with_env(token)
        os.kill(host.pid, signal.SIGKILL)
        host.wait()
        assert wait_until(lambda: not host_pids_with_env(token)), "the worker outlived its host"
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()


def test_handler_is_not_reachable_by_forged_calls_with_bad_kinds(
    make_sandbox: Callable[..., ProcessSandbox],
) -> None:
    # the handler sees only validated requests: llm/rlm items with str prompts, or budget
    seen: list[object] = []

    def recording(request: object) -> list[str]:
        seen.append(request)
        return echo_handler(request)  # type: ignore[arg-type,return-value]

    sandbox = ProcessSandbox()
    try:
        sandbox.start([], recording)  # type: ignore[arg-type]
        sandbox.execute(
            "import os, struct, sys, json\n"
            "data = json.dumps({'op': 'call', 'id': 5, 'kind': 'exec', 'items': ['x']}).encode()\n"
            "os.write(int(sys.argv[2]), struct.pack('>I', len(data)) + data)\n"
            "print(llm_query('fine'))"
        )
        kinds = {getattr(r, "kind", None) for r in seen}
        assert kinds == {"llm"}
    finally:
        sandbox.close()
