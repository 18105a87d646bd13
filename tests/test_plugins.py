"""Model providers and sandbox backends from a third-party package, found by entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ctxfold
from ctxfold.errors import ModelSpecError, SandboxError
from ctxfold.models import resolve_model
from ctxfold.plugins import MODEL_GROUP, SANDBOX_GROUP, plugin_names
from ctxfold.sandbox import make_sandbox

_PLUGIN = """
from ctxfold.models import ScriptedModel
from ctxfold.sandbox import ProcessSandbox

MADE = []

def make_echo(rest):
    code = "print(len(context))\\nanswer['content'] = 'echo ' + %r\\nanswer['ready'] = True"
    reply = "```python\\n" + code % rest + "\\n```"
    return ScriptedModel(lambda messages: reply, name="echo:" + rest)

def make_sandbox():
    MADE.append(1)
    return ProcessSandbox(spare=False)

def broken(rest):
    raise RuntimeError("never")
"""

_ENTRY_POINTS = """[ctxfold.models]
echo = echo_plugin:make_echo
missing = echo_plugin_gone:make

[ctxfold.sandboxes]
mine = echo_plugin:make_sandbox
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package 'echo-plugin' installed on sys.path, as pip would lay it out."""
    (tmp_path / "echo_plugin.py").write_text(_PLUGIN, encoding="utf-8")
    info = tmp_path / "echo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(_ENTRY_POINTS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_the_built_ins_are_plugins_too() -> None:
    assert {"local", "openai", "anthropic"} <= set(plugin_names(MODEL_GROUP))
    assert {"process", "docker"} <= set(plugin_names(SANDBOX_GROUP))


def test_a_model_provider_from_another_package(plugin: Path) -> None:
    model = resolve_model("echo:hello")
    assert model.name == "echo:hello"
    with ctxfold.RLM("echo:hello", sandbox="mine") as rlm:
        result = rlm.run("q", "some input")
    assert result.ready and result.answer == "echo hello"
    assert sys.modules["echo_plugin"].MADE  # the run's sandbox came from the plugin


def test_unknown_and_broken_plugins_are_one_line_errors(plugin: Path) -> None:
    with pytest.raises(ModelSpecError, match=r"installed providers: anthropic, echo, "):
        resolve_model("nope:x")
    with pytest.raises(ModelSpecError, match="could not be loaded: ModuleNotFoundError"):
        resolve_model("missing:x")
    with pytest.raises(SandboxError, match="installed: docker, mine, process"):
        make_sandbox("vm")


def test_the_command_line_uses_the_plugin(plugin: Path, tmp_path: Path) -> None:
    data = tmp_path / "input.txt"
    data.write_text("four", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": f"{plugin}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-m", "ctxfold", "ask", "q", "--context", str(data), "-m", "echo:cli"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "echo cli\n"
