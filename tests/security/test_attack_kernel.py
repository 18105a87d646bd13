"""Attacks on the kernel surface and on RAM and disk from inside the sandbox: new user
namespaces, RAM-backed folders outside the memory limit, a scratch folder without a total."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ctxfold.errors import SandboxError
from ctxfold.sandbox import ProcessSandbox, _isolation
from ctxfold.sandbox._seccomp import syscall_filter

from .attack_helpers import text

_NAMESPACES = """
import ctypes, errno, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def tried(name, result):
    print(name, "allowed" if result == 0 else errno.errorcode.get(ctypes.get_errno(), "?"))
tried("unshare-user", libc.unshare(0x10000000))
tried("unshare-user-mount", libc.unshare(0x10000000 | 0x00020000))
SYS_clone3 = 435  # x86-64 and aarch64
tried("clone3", libc.syscall(SYS_clone3, 0, 0))
cli = subprocess.run(["unshare", "-U", "-r", "id"], capture_output=True, text=True)
print("unshare-cli", "allowed" if cli.returncode == 0 else "refused")
child = subprocess.run(["python3", "-c", "print(6 * 7)"], capture_output=True, text=True)
print("subprocess", child.stdout.strip())
pid = os.fork()
if pid == 0:
    os._exit(7)
print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def _denied(output: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in output.splitlines())


def _check_denied(result_text: str, stdout: str) -> None:
    seen = _denied(stdout)
    assert seen["unshare-user"] == "EPERM", result_text
    assert seen["unshare-user-mount"] == "EPERM"
    assert seen["clone3"] == "ENOSYS"
    assert seen["unshare-cli"] == "refused"
    assert seen["subprocess"] == "42" and seen["fork"] == "7"  # processes still work


def test_code_cannot_create_a_user_namespace(
    make_sandbox: Callable[..., ProcessSandbox],
) -> None:
    if syscall_filter() is None:
        pytest.skip("libseccomp is not available here")
    sandbox = make_sandbox()
    result = sandbox.execute(_NAMESPACES, timeout=60)
    assert result.error is None, result.error
    _check_denied(text(result), result.stdout)


@pytest.mark.filterwarnings("ignore::ctxfold.sandbox.IsolationWarning")
@pytest.mark.parametrize("level", [_isolation.UNSHARE, _isolation.RLIMITS])
def test_the_filter_holds_at_the_fallback_levels(
    monkeypatch: pytest.MonkeyPatch, make_sandbox: Callable[..., ProcessSandbox], level: str
) -> None:
    if syscall_filter() is None:
        pytest.skip("libseccomp is not available here")
    prefix: tuple[str, ...] = ()
    if level == _isolation.UNSHARE:
        unshare = shutil.which("unshare")
        if unshare is None or subprocess.run([unshare, "--net", "true"]).returncode != 0:
            pytest.skip("unshare --net does not work here")
        prefix = (unshare, "--net", "--")
    monkeypatch.setattr(_isolation, "_best", lambda: (level, prefix))
    sandbox = make_sandbox(isolate=None, spare=False)
    assert sandbox.isolation == level
    result = sandbox.execute(_NAMESPACES, timeout=60)
    assert result.error is None, result.error
    _check_denied(text(result), result.stdout)


_FILL = """
import os
for where in ({places}):
    written = 0
    try:
        with open(os.path.join(where, "fill.bin"), "wb") as f:
            while written < {most}:
                f.write(b"x" * 2**20)
                f.flush()
                written += 1
    except OSError as exc:
        print(where, written, exc.strerror)
    else:
        print(where, written, "no limit")
    try:
        os.remove(os.path.join(where, "fill.bin"))
    except OSError:
        pass
"""


def _bwrap_or_skip(sandbox: ProcessSandbox) -> None:
    if not sandbox.isolation.startswith("bwrap"):
        pytest.skip("the RAM-backed folders are bubblewrap's")


def test_tmp_and_dev_shm_are_bounded_within_the_memory_limit(
    make_sandbox: Callable[..., ProcessSandbox],
) -> None:
    sandbox = make_sandbox(memory_mb=256)
    _bwrap_or_skip(sandbox)
    fill = _FILL.format(places="'/tmp', '/dev/shm'", most=1024)
    result = sandbox.execute(fill, timeout=120)
    assert result.error is None, result.error
    for line in result.stdout.splitlines():
        _, written, why = line.split(" ", 2)
        assert why == "No space left on device", line
        assert int(written) <= 16  # tmp_mb = 256 // 16
    limit = sandbox.execute("import resource\nprint(resource.getrlimit(resource.RLIMIT_AS)[0])")
    assert int(limit.stdout) == (256 - 32 - 2 * 16) * 2**20  # what the folders leave


def test_scratch_has_a_total_and_the_host_disk_is_untouched(
    make_sandbox: Callable[..., ProcessSandbox],
) -> None:
    sandbox = make_sandbox(memory_mb=1024, scratch_mb=48, max_file_mb=16)
    _bwrap_or_skip(sandbox)
    many = (
        "import os\n"
        "n = 0\n"
        "try:\n"
        "    while n < 200:\n"
        "        with open(f'part{n}.bin', 'wb') as f:\n"
        "            f.write(b'x' * 15 * 2**20)\n"
        "        n += 1\n"
        "except OSError as exc:\n"
        "    print(n, exc.strerror)\n"
    )
    result = sandbox.execute(many, timeout=120)
    assert result.error is None, result.error
    files, why = result.stdout.split(" ", 1)
    assert why.strip() == "No space left on device" and int(files) <= 3
    host_folder = Path(str(sandbox._scratch))  # the host's folder behind the mount
    assert not any(host_folder.iterdir())
    assert sandbox.scratch_dir is not None and any(Path(sandbox.scratch_dir).iterdir())


def test_sizes_that_leave_no_room_are_refused() -> None:
    with pytest.raises(SandboxError, match="leaves under 64 MiB"):
        ProcessSandbox(memory_mb=512, scratch_mb=400)
    with pytest.raises(SandboxError, match="tmp_mb"):
        ProcessSandbox(tmp_mb=0)
