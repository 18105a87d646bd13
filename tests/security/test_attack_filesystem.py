"""Cells that try to write outside the scratch dir, change the system, or fill the disk."""

from __future__ import annotations

import os
import secrets
import site
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ctxfold.sandbox import ProcessSandbox
from ctxfold.sandbox._host import WORKER_PATH

from .attack_helpers import PROJECT, text


def _bwrap(sandbox: ProcessSandbox) -> bool:
    return sandbox.isolation.startswith("bwrap")


@pytest.mark.parametrize(
    "where",
    [
        Path("/tmp"),
        PROJECT,
        Path(site.getsitepackages()[0]) if site.getsitepackages() else Path(sys.prefix),
        Path(sys.prefix) / "bin",
    ],
    ids=["host-tmp", "project", "venv-site-packages", "venv-bin"],
)
def test_writes_outside_scratch_do_not_reach_the_host(sandbox: ProcessSandbox, where: Path) -> None:
    target = where / f"ctxfold-escape-{secrets.token_hex(6)}.pth"
    try:
        result = sandbox.execute(
            f"open({str(target)!r}, 'w').write('import os; os.system(\"id\")')\nprint('wrote')"
        )
        assert not target.exists(), f"the sandbox wrote {target} on the host"
        if where != Path("/tmp"):  # a private /tmp may take the write; nothing else does
            assert result.error is not None
    finally:
        target.unlink(missing_ok=True)


def test_scratch_is_writable(sandbox: ProcessSandbox) -> None:
    result = sandbox.execute("open('mine.txt', 'w').write('ok')\nprint(open('mine.txt').read())")
    assert result.error is None and result.stdout == "ok\n"
    assert sandbox.scratch_dir is not None
    assert (Path(sandbox.scratch_dir) / "mine.txt").read_text() == "ok"


def test_input_and_worker_files_are_read_only(sandbox: ProcessSandbox, context_file: Path) -> None:
    before_worker = WORKER_PATH.read_bytes()
    result = sandbox.execute(
        "import sys\n"
        f"for path in ({str(context_file)!r}, sys.argv[0]):\n"
        "    try:\n"
        "        open(path, 'w').write('pwned')\n"
        "        print('wrote', path)\n"
        "    except OSError as exc:\n"
        "        print('refused', type(exc).__name__)"
    )
    assert result.error is None, result.error
    assert context_file.read_text() == "the quick brown fox"
    assert WORKER_PATH.read_bytes() == before_worker
    assert "wrote" not in result.stdout


@pytest.mark.parametrize("knob", ["kernel/hostname", "kernel/core_pattern", "vm/swappiness"])
def test_proc_sys_is_not_writable(sandbox: ProcessSandbox, knob: str) -> None:
    path = f"/proc/sys/{knob}"
    before = Path(path).read_text()
    # writes back the value it reads: harmless even if a write went through
    result = sandbox.execute(f"v = open({path!r}).read()\nopen({path!r}, 'w').write(v)")
    assert Path(path).read_text() == before
    if _bwrap(sandbox) or os.geteuid() != 0:
        assert result.error is not None and (
            "PermissionError" in result.error or "OSError" in result.error
        )


def test_huge_file_in_scratch_is_cut_by_rlimit_fsize(
    make_sandbox: Callable[..., ProcessSandbox],
) -> None:
    sandbox = make_sandbox(max_file_mb=8)
    result = sandbox.execute(
        "with open('big.bin', 'wb') as f:\n"
        "    for _ in range(16):\n"
        "        f.write(b'x' * 2**20)\n"
        "        f.flush()"
    )
    assert result.error is not None and "File too large" in result.error
    assert not result.restarted
    assert sandbox.scratch_dir is not None
    assert (Path(sandbox.scratch_dir) / "big.bin").stat().st_size <= 8 * 2**20
    assert sandbox.execute("print('still here')").stdout == "still here\n"


@pytest.mark.parametrize(
    "cell",
    [
        "import os\nos.setuid(0)",
        "import subprocess\nr = subprocess.run(['mount', '-t', 'tmpfs', 'x', '/mnt'])\n"
        "assert r.returncode == 0",
        "open('/dev/mem', 'rb').read(1)",
        "import os\nos.chroot('/')",
    ],
    ids=["setuid-root", "mount", "dev-mem", "chroot"],
)
def test_privileged_operations_fail(sandbox: ProcessSandbox, cell: str) -> None:
    if not _bwrap(sandbox) and os.geteuid() == 0:
        pytest.skip("without bubblewrap a worker that could not drop root keeps root's powers")
    result = sandbox.execute(cell)
    assert result.error is not None, text(result)
