"""`ctxfold chat`, `ask --cite` and `ask --schema`, run as real subprocesses against a fake
OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ctxfold.testing.fake_openai import FakeOpenAIServer

LOG = "boot ok\nERROR disk full on /var\nshutdown\n"


def ctxfold(*args: str, stdin: str | None = None, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_STATE_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "ctxfold", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _question(messages: list[dict]) -> str:
    task = next(m["content"] for m in messages if m["role"] == "user")
    return [line for line in task.splitlines() if line.startswith("Question: ")][-1]


def _chat_reply(messages: list[dict]) -> str:
    question = _question(messages)
    if question == "Question: which error?":
        return (
            "```python\ni = context.find('ERROR')\nline = context[i:context.index('\\n', i)]\n"
            "print(cite(i, i + len(line)))\nanswer['content'] = line\nanswer['ready'] = True\n```"
        )
    return (  # the second question builds on the first one's variable
        "```python\nprint(line)\nanswer['content'] = line.split()[-1]\nanswer['ready'] = True\n```"
    )


def test_chat_keeps_the_repl_between_questions(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text(LOG, encoding="utf-8")
    saved = tmp_path / "chat.md"
    script = f"which error?\n/sources\n/vars\nwhere?\n/save {saved}\n/nonsense\n"
    with FakeOpenAIServer(_chat_reply) as server:
        proc = ctxfold(
            "chat",
            "--context",
            str(log),
            "--model",
            f"openai:m@{server.base_url}",
            stdin=script,
            home=tmp_path,
        )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "ERROR disk full on /var"
    assert "[1] context[8:31]" in proc.stdout and "     ERROR disk full on /var" in proc.stdout
    assert any(line.startswith("line: str") for line in out)  # /vars
    assert "/var" in out  # the second answer, from the first question's variable
    assert saved.read_text().startswith("## which error?\n\nERROR disk full on /var\n")
    assert "Unknown command '/nonsense'" in proc.stderr
    assert not (tmp_path / "ctxfold").exists()  # no history file when not at a terminal


def test_chat_errors_are_one_line(tmp_path: Path) -> None:
    proc = ctxfold("chat", "--context", "-", home=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "ctxfold: error: chat reads your questions from standard input: pass files, not '-'"
    )
    proc = ctxfold("chat", home=tmp_path)
    assert proc.returncode == 2 and "--context" in proc.stderr and "Traceback" not in proc.stderr


def _typed_reply(messages: list[dict]) -> str:
    return (
        "```python\nprint(context.count('ERROR'))\nanswer['content'] = {'errors': "
        "context.count('ERROR')}\nanswer['ready'] = True\n```"
    )


def test_ask_cite_and_schema(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text(LOG, encoding="utf-8")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["errors"]}), encoding="utf-8")
    with FakeOpenAIServer(_chat_reply) as server:
        cited = ctxfold(
            "ask",
            "which error?",
            "--context",
            str(log),
            "--cite",
            "--model",
            f"openai:m@{server.base_url}",
            home=tmp_path,
        )
    assert cited.returncode == 0, cited.stderr
    assert cited.stdout.splitlines()[:4] == [
        "ERROR disk full on /var",
        "",
        "Sources:",
        "  [1] context[8:31]",
    ]
    with FakeOpenAIServer(_typed_reply) as server:
        typed = ctxfold(
            "ask",
            "how many errors?",
            "--context",
            str(log),
            "--schema",
            str(schema),
            "--json",
            "--model",
            f"openai:m@{server.base_url}",
            home=tmp_path,
        )
    assert typed.returncode == 0, typed.stderr
    assert json.loads(typed.stdout)["value"] == {"errors": 1}
    bad = ctxfold("ask", "q", "--context", str(log), "--schema", str(log), home=tmp_path)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1
    assert "is not JSON" in bad.stderr
