"""The response cache: repeated runs answered from disk, over real HTTP and real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import ctxfold
from ctxfold.cache import CachedModel, ResponseCache
from ctxfold.models import ScriptedModel, WithOptions, prepare_model
from ctxfold.testing.fake_openai import FakeOpenAIServer
from ctxfold.trace import RootResponse, SubcallEnd


def _reply(messages: list[dict[str, Any]]) -> str:
    last = messages[-1]["content"]
    if last.startswith("sub "):
        return f"seen {last}"
    if "Output" in last:
        return '```python\nanswer["content"] = r[1]\nanswer["ready"] = True\n```'
    return "```python\nr = llm_batch(['sub a', 'sub b', 'sub c'])\nprint(r)\n```"


def test_a_repeated_run_is_answered_from_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "replies.sqlite"
    with FakeOpenAIServer(_reply) as fake:
        model = f"openai:fake@{fake.base_url}"
        with ctxfold.RLM(model, cache=cache) as rlm:
            first = rlm.run("Which?", "data")
        asked = len(fake.requests)
        budget = ctxfold.Budget(tokens=100)  # far less than the run took: hits spend nothing
        with ctxfold.RLM(model, cache=cache, budget=budget) as rlm:
            second = rlm.run("Which?", "data")
        assert len(fake.requests) == asked == 5  # two root turns, three sub-calls: once
    assert second.answer == first.answer == "seen sub b" and second.ready
    usage = second.usage
    assert usage.root.cache_hits == usage.root_calls == 2
    assert usage.sub.cache_hits == usage.sub_calls == 3 and usage.cost_usd == 0
    assert all(e.cache_hit for e in second.trace.of_type(RootResponse))
    assert all(e.cache_hit for e in second.trace.of_type(SubcallEnd))
    assert not any(e.cache_hit for e in first.trace.of_type(SubcallEnd))


def test_the_key_holds_the_model_messages_and_reply_changing_options(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite")
    scripted = ScriptedModel(lambda m: f"reply {len(m)}", name="a")
    model = CachedModel(scripted, cache)
    hello = [{"role": "user", "content": "hello"}]
    model.complete(hello)
    model.complete(hello, deadline=123.0, timeout=5)  # not part of the key: a hit
    model.complete(hello, temperature=0.7)  # a miss
    model.complete([{"role": "user", "content": "other"}])  # a miss
    CachedModel(ScriptedModel(lambda m: "x", name="b"), cache).complete(hello)  # another model
    assert len(scripted.calls) == 3
    assert cache.stats().models == {"a": 3, "b": 1}


def test_many_processes_write_one_cache(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    writer = (
        "import sys\n"
        "from ctxfold.cache import ResponseCache\n"
        "from ctxfold.models import Completion, TokenUsage\n"
        "cache = ResponseCache(sys.argv[1])\n"
        "for i in range(100):\n"
        "    key = cache.key('m', [{'role': 'user', 'content': f'{sys.argv[2]}-{i}'}], {})\n"
        "    cache.put(key, 'm', Completion(f'r{i}', TokenUsage(3, 1), 'm'))\n"
        "    assert cache.get(key).text == f'r{i}'\n"
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", writer, str(path), str(n)]) for n in range(4)
    ]
    assert [w.wait(120) for w in writers] == [0, 0, 0, 0]
    assert ResponseCache(path).stats().entries == 400


def test_ask_cache_and_the_cache_command(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("data")
    cache = str(tmp_path / "c.sqlite")

    def ctxfold_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ctxfold", *args], capture_output=True, text=True, timeout=120
        )

    with FakeOpenAIServer(_reply) as fake:
        ask = ["ask", "Which?", "--context", str(tmp_path / "in.txt"), "--quiet"]
        ask += ["--model", f"openai:fake@{fake.base_url}", "--cache", cache]
        assert ctxfold_cli(*ask).stdout.strip() == "seen sub b"
        asked = len(fake.requests)
        assert ctxfold_cli(*ask).stdout.strip() == "seen sub b"
        assert len(fake.requests) == asked
    stats = ctxfold_cli("cache", "stats", "--path", cache)
    assert "5 replies" in stats.stdout and "fake: 5" in stats.stdout
    assert "removed 5 replies" in ctxfold_cli("cache", "clear", "--path", cache).stdout
    assert "0 replies" in ctxfold_cli("cache", "stats", "--path", cache).stdout


class _Preparable(ScriptedModel):
    prepared = 0

    def prepare(self) -> None:
        self.prepared += 1


def test_prepare_reaches_the_model_inside_the_wrappers(tmp_path: Path) -> None:
    inner = _Preparable(["x"])
    cached = CachedModel(WithOptions(inner, temperature=0.5), ResponseCache(tmp_path / "c.sqlite"))
    prepare_model(cached)
    assert inner.prepared == 1
    prepare_model(ScriptedModel(["x"]))  # a model with nothing to prepare is left alone
