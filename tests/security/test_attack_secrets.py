"""Cells that try to steal what the host holds: API keys, private keys, the project, system files.

Every cell runs in a real ProcessSandbox with the default (best available) isolation, started
after the host's environment got a fake OPENAI_API_KEY and its $HOME a fake ~/.ssh/id_rsa.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import ctxfold
from ctxfold.sandbox import ProcessSandbox

from .attack_helpers import PROJECT, SECRET_KEY, Loot, text


def test_api_key_is_not_in_the_environment(sandbox: ProcessSandbox) -> None:
    result = sandbox.execute(
        "import os\nprint(dict(os.environ))\nprint(os.environ.get('OPENAI_API_KEY'))"
    )
    assert result.error is None
    assert SECRET_KEY not in text(result)
    assert result.stdout.rstrip().endswith("None")


@pytest.mark.parametrize("which", ["'self'", "1", "HOST", "os.getppid()"])  # Python expressions
def test_api_key_is_not_in_any_visible_proc_environ(sandbox: ProcessSandbox, which: str) -> None:
    pid = which.replace("HOST", str(os.getpid()))
    code = (
        "import os\n"
        "try:\n"
        f"    data = open('/proc/' + str({pid}) + '/environ', 'rb').read()\n"
        "    print('read', len(data), b'sk-ctxfold' in data)\n"
        "except OSError as exc:\n"
        "    print('refused', type(exc).__name__)"
    )
    result = sandbox.execute(code)
    assert result.error is None, result.error
    assert SECRET_KEY not in text(result)
    assert "True" not in result.stdout


def test_no_process_the_sandbox_sees_holds_the_key(sandbox: ProcessSandbox) -> None:
    code = (
        "import os\n"
        "found, seen = [], 0\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    for name in ('environ', 'cmdline'):\n"
        "        try:\n"
        "            data = open(f'/proc/{pid}/{name}', 'rb').read()\n"
        "        except OSError:\n"
        "            continue\n"
        "        seen += 1\n"
        "        found += [pid] if b'sk-ctxfold' in data else []\n"
        "print('found', found, 'seen', seen)"
    )
    result = sandbox.execute(code)
    assert result.error is None, result.error
    assert "found []" in result.stdout


def test_host_pid_is_not_visible(sandbox: ProcessSandbox) -> None:
    host = os.getpid()
    result = sandbox.execute(f"import os\nprint(os.path.exists('/proc/{host}/environ'))")
    if sandbox.isolation.startswith("bwrap"):
        assert result.stdout == "False\n"
    assert SECRET_KEY not in text(result)


@pytest.mark.parametrize("how", ["host_path", "home_tilde", "walk"])
def test_private_key_outside_scratch_is_unreadable(
    sandbox: ProcessSandbox, loot: Loot, how: str
) -> None:
    code = {
        "host_path": f"print(open({str(loot.secret_file)!r}).read())",
        "home_tilde": "import os\nprint(open(os.path.expanduser('~/.ssh/id_rsa')).read())",
        "walk": (
            "import os\n"
            "for top in ('/tmp', '/root', '/home', '/work', os.path.expanduser('~')):\n"
            "    for d, _, files in os.walk(top):\n"
            "        for f in files:\n"
            "            if f == 'id_rsa':\n"
            "                print(open(os.path.join(d, f)).read())"
        ),
    }[how]
    result = sandbox.execute(code, timeout=60)
    assert loot.secret_text not in text(result)
    if how != "walk":
        assert result.error is not None


@pytest.mark.parametrize(
    "target",
    [
        PROJECT / "README.md",
        PROJECT / "pyproject.toml",
        Path(ctxfold.__file__).resolve(),
        Path(__file__).resolve(),
    ],
    ids=["readme", "pyproject", "ctxfold-source", "this-test"],
)
def test_project_files_are_not_visible(sandbox: ProcessSandbox, target: Path) -> None:
    if not target.exists():
        pytest.skip(f"{target} is not there")
    result = sandbox.execute(f"print(open({str(target)!r}).read()[:200])")
    if sandbox.isolation.startswith("bwrap"):
        assert result.error is not None and "FileNotFoundError" in result.error
        assert result.stdout == ""


def test_ctxfold_itself_is_not_importable(sandbox: ProcessSandbox) -> None:
    result = sandbox.execute("import ctxfold")
    if sandbox.isolation.startswith("bwrap"):
        assert result.error is not None and "ModuleNotFoundError" in result.error


@pytest.mark.parametrize(
    "path", ["/etc/shadow", "/etc/passwd", "/etc/sudoers", "/root/.bash_history", "/proc/kcore"]
)
def test_system_secrets_are_unreadable(sandbox: ProcessSandbox, path: str) -> None:
    result = sandbox.execute(f"print(len(open({path!r}, 'rb').read(64)))")
    if not sandbox.isolation.startswith("bwrap") and os.geteuid() == 0:
        pytest.skip("without bubblewrap a worker that could not drop root reads what root reads")
    assert result.error is not None, result.stdout
    assert any(e in result.error for e in ("FileNotFoundError", "PermissionError"))


def test_filesystem_view_is_minimal(sandbox: ProcessSandbox) -> None:
    if not sandbox.isolation.startswith("bwrap"):
        pytest.skip("only bubblewrap narrows the filesystem")
    result = sandbox.execute(
        "import os, sys\nprint(sorted(os.listdir('/')))\nprint(sorted(os.listdir('/etc')))\n"
        "print(os.listdir(os.path.dirname(sys.prefix)))"
    )
    assert result.error is None, result.error
    top, etc, around_venv = result.stdout.splitlines()
    assert "home" not in top and "var" not in top and "sys" not in top
    assert "passwd" not in etc and "shadow" not in etc and "hostname" not in etc
    assert eval(around_venv) == [Path(sys.prefix).name]  # the venv, not the project around it


def test_other_sandboxes_scratch_is_invisible(
    make_sandbox: Callable[..., ProcessSandbox], loot: Loot
) -> None:
    first, second = make_sandbox(), make_sandbox()
    assert first.execute(f"open('note.txt', 'w').write({loot.secret_text!r})").error is None
    assert first.scratch_dir is not None
    result = second.execute(f"print(open({first.scratch_dir + '/note.txt'!r}).read())")
    assert loot.secret_text not in text(result)
    assert result.error is not None
