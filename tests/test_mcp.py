"""`ctxfold mcp` over stdio, driven by the official `mcp` client, with the scripted fake OpenAI
server as the model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from ctxfold.errors import CtxfoldError
from ctxfold.testing.fake_openai import FakeOpenAIServer

mcp = pytest.importorskip("mcp")
from mcp import Client, StdioServerParameters  # noqa: E402

from ctxfold.serve.mcp import paths_under  # noqa: E402


def _reply(messages: list[dict[str, Any]]) -> str:
    last = messages[-1]["content"]
    if last.startswith("sub "):
        return "ok"
    if "Output:" in last:
        return (
            '```python\nk = 2 if "context_1" in globals() else 1\n'
            'answer["content"] = f"{k} inputs, first has {n} chars"\n'
            'answer["ready"] = True\n```'
        )
    return "```python\nn = len(str(context))\nprint(llm_batch(['sub a', 'sub b']))\n```"


def _params(url: str, root: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "ctxfold", "mcp", "--model", f"openai:fake@{url}", "--root", str(root)],
    )


async def test_ask_answers_over_files_under_the_root_with_progress(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "app.log").write_text("line\n" * 100)
    (tmp_path / "notes.txt").write_text("hello")
    progress: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    with FakeOpenAIServer(_reply) as fake:
        async with Client(_params(fake.base_url, tmp_path)) as client:
            tools = await client.list_tools()
            assert [t.name for t in tools.tools] == ["ask"]
            one = await client.call_tool(
                "ask",
                {"question": "How long?", "paths": ["logs/app.log"]},
                progress_callback=on_progress,
            )
            assert not one.is_error
            assert one.content[0].text.startswith("1 inputs, first has 500 chars")
            two = await client.call_tool(
                "ask", {"question": "How long?", "paths": ["logs", "notes.txt"]}
            )
            assert two.content[0].text.startswith("2 inputs")
            outside = await client.call_tool(
                "ask", {"question": "What?", "paths": ["../../etc/passwd"]}
            )
            assert outside.is_error and "outside the server's root" in outside.content[0].text
            missing = await client.call_tool("ask", {"question": "What?", "paths": ["nope.txt"]})
            assert missing.is_error and "does not exist" in missing.content[0].text
            # ... and it keeps serving
            again = await client.call_tool("ask", {"question": "How?", "paths": ["notes.txt"]})
            assert again.content[0].text.startswith("1 inputs, first has 5 chars")
    assert "turn 1: the root model is thinking" in progress
    assert any("2 sub-calls done" in note for note in progress)


def test_paths_are_kept_under_the_root(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    (tmp_path / "in" / "escape").symlink_to("/etc")
    assert paths_under(tmp_path / "in", ["a.txt"]) == [(tmp_path / "in" / "a.txt").resolve()]
    for bad in (["../x"], ["/etc/passwd"], ["escape/passwd"]):
        with pytest.raises(CtxfoldError, match="outside the server's root"):
            paths_under(tmp_path / "in", bad)
    with pytest.raises(CtxfoldError, match="at least one"):
        paths_under(tmp_path, [])
