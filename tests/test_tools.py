"""Tools for sub-LLMs: schemas, the text-protocol tool loop, built-in corpus tools, web search."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

import ctxfold
from ctxfold.errors import CtxfoldError, MissingAPIKeyError
from ctxfold.models import ScriptedModel
from ctxfold.tools import Corpus, Tool, WebSearch, as_tools, corpus_tools, run_tool_loop
from ctxfold.tools._loop import parse_tool_call
from ctxfold.trace import RootResponse, SubcallEnd, ToolCall


def code(src: str) -> str:
    return f"Let me run this.\n```python\n{src}\n```"


def tool_block(name: str, **arguments: Any) -> str:
    return f"```tool\n{json.dumps({'name': name, 'arguments': arguments})}\n```"


# -- schemas ---------------------------------------------------------------------------------


def lookup(
    query: str,
    k: int = 5,
    scale: float = 1.0,
    exact: bool = False,
    tags: list[str] | None = None,
    mode: Literal["fast", "slow"] = "fast",
) -> str:
    """Look things up in the index.

    More text that is not the description.

    Args:
        query: what to look for,
            over two lines.
        k: how many results.
        mode: the search mode.

    Returns:
        The matches.
    """
    return query


def test_schema_from_signature_and_docstring() -> None:
    tool = Tool.from_function(lookup)
    assert tool.name == "lookup"
    assert tool.description == "Look things up in the index."
    props = tool.parameters["properties"]
    assert tool.parameters["required"] == ["query"]
    assert props["query"] == {"type": "string", "description": "what to look for, over two lines."}
    assert props["k"] == {"type": "integer", "description": "how many results.", "default": 5}
    assert props["scale"] == {"type": "number", "default": 1.0}
    assert props["exact"] == {"type": "boolean", "default": False}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}, "default": None}
    assert props["mode"]["enum"] == ["fast", "slow"] and props["mode"]["type"] == "string"
    assert tool.signature() == (
        "lookup(query, k=5, scale=1.0, exact=False, tags=None, mode='fast')"
    )


def test_as_tools_checks_items_and_names() -> None:
    def a(x: int) -> int:
        """A."""
        return x

    assert [t.name for t in as_tools([a, Tool.from_function(lookup)])] == ["a", "lookup"]
    with pytest.raises(CtxfoldError, match="share a name"):
        as_tools([a, a])
    with pytest.raises(CtxfoldError, match="functions or"):
        ctxfold.RLM(ScriptedModel(["x"]), tools=[42])


def test_parse_tool_call_variants() -> None:
    names = {"search"}
    assert parse_tool_call(tool_block("search", query="q"), names) == ("search", {"query": "q"})
    # A json block counts only when it names a known tool.
    block = '```json\n{"name": "search", "arguments": "{\\"query\\": \\"q\\"}"}\n```'
    assert parse_tool_call(block, names) == ("search", {"query": "q"})
    assert parse_tool_call('```json\n{"name": "other"}\n```', names) is None
    assert parse_tool_call("The answer is 4.", names) is None
    assert "not valid JSON" in str(parse_tool_call("```tool\n{oops\n```", names))


# -- the tool loop inside a run --------------------------------------------------------------


def _run_with_tools(sub: ScriptedModel, tools: list[Any], **kw: Any) -> ctxfold.Result:
    root = ScriptedModel(
        [
            code('r = llm_query("What is the capital? Use the tools.")\nprint(r)'),
            code('answer["content"] = r\nanswer["ready"] = True'),
        ],
        name="root",
    )
    return ctxfold.RLM(model=root, sub_model=sub, tools=tools, **kw).run("q", context="data")


def test_sub_llm_calls_a_tool_and_its_final_text_reaches_the_sandbox(no_orphans) -> None:
    seen: list[dict[str, Any]] = []

    def capital(country: str, year: int = 2020) -> str:
        """The capital of a country.

        Args:
            country: the country's name.
            year: the year asked about.
        """
        seen.append({"country": country, "year": year})
        return "TOOL-OUTPUT-Paris-7731"

    sub = ScriptedModel(
        [tool_block("capital", country="France", year=1999), "The capital is Paris."], name="sub"
    )
    result = _run_with_tools(sub, [capital])
    assert result.ready and result.answer == "The capital is Paris."
    assert seen == [{"country": "France", "year": 1999}]
    # The sub-LLM got the protocol in its system message and the result in the next turn.
    assert (
        "```tool" in sub.calls[0][0]["content"] and "capital(country" in sub.calls[0][0]["content"]
    )
    assert "TOOL-OUTPUT-Paris-7731" in sub.calls[1][-1]["content"]
    # Traced as a nested tool call; both sub turns counted in the usage.
    (call,) = result.trace.of_type(ToolCall)
    (end,) = result.trace.of_type(SubcallEnd)
    assert call.call_id == end.call_id and call.tool == "capital" and call.error is None
    assert call.arguments == {"country": "France", "year": 1999} and "Paris" in call.result
    assert result.usage.sub.calls == 2
    assert end.input_tokens == result.usage.sub.input_tokens


def test_root_prompt_lists_tools_but_never_tool_output() -> None:
    def secret(topic: str) -> str:
        """Find a secret about a topic."""
        return "SECRET-TOOL-OUTPUT"

    root = ScriptedModel(
        [
            code('r = llm_query("find the secret")\nprint(len(r))'),
            code('answer["content"] = "done"\nanswer["ready"] = True'),
        ],
        name="root",
    )
    sub = ScriptedModel([tool_block("secret", topic="x"), "I found it."], name="sub")
    result = ctxfold.RLM(model=root, sub_model=sub, tools=[secret]).run("q", context="data")
    assert result.ready
    system = root.calls[0][0]["content"]
    assert "secret(topic) - Find a secret about a topic. You cannot" in system
    assert "You cannot call them yourself" in system
    everything = json.dumps(root.calls)
    assert "SECRET-TOOL-OUTPUT" not in everything
    assert "SECRET-TOOL-OUTPUT" in json.dumps(sub.calls)


def test_no_tools_means_no_tools_note() -> None:
    root = ScriptedModel(
        [code('answer["content"] = "x"\nprint(1)'), code('answer["ready"] = True')]
    )
    ctxfold.RLM(model=root, sub_model=ScriptedModel(["s"])).run("q", context="d")
    assert "Sub-LLMs called with" not in root.calls[0][0]["content"]


def test_tool_exception_becomes_an_error_message_and_the_run_continues() -> None:
    def boom(x: int) -> str:
        """Always fails."""
        raise ValueError("bad input")

    sub = ScriptedModel([tool_block("boom", x=1), "Recovered."], name="sub")
    result = _run_with_tools(sub, [boom])
    assert result.ready and result.answer == "Recovered."
    assert "Tool error (boom): ValueError: bad input" in sub.calls[1][-1]["content"]
    (call,) = result.trace.of_type(ToolCall)
    assert call.error == "ValueError: bad input"


# -- the loop itself ---------------------------------------------------------------------------


def _loop(replies: list[str], tools: list[Tool], **kw: Any) -> tuple[str, ScriptedModel]:
    model = ScriptedModel(replies)
    out = run_tool_loop(model.complete, [{"role": "user", "content": "go"}], tools, **kw)
    return out.text, model


def test_tool_timeout_is_an_error_message_not_a_hang() -> None:
    release = threading.Event()

    def slow() -> str:
        """Sleeps."""
        release.wait(10)
        return "late"

    tool = Tool.from_function(slow, timeout=0.3)
    started = time.monotonic()
    text, model = _loop([tool_block("slow"), "gave up"], [tool])
    release.set()
    assert text == "gave up" and time.monotonic() - started < 3
    assert "timed out after 0.3 s" in model.calls[1][-1]["content"]


def test_tool_turns_are_bounded() -> None:
    calls: list[int] = []

    def again(n: int) -> str:
        """Loop forever."""
        calls.append(n)
        return "more"

    replies = [tool_block("again", n=i) for i in range(10)]
    outcomes: list[Any] = []
    model = ScriptedModel(replies)
    out = run_tool_loop(
        model.complete,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "go"}],
        [Tool.from_function(again)],
        max_turns=3,
        on_tool=outcomes.append,
    )
    assert calls == [0, 1, 2] and len(model.calls) == 4
    assert [o.turn for o in outcomes] == [1, 2, 3]
    assert out.text.startswith("[error: tools: the limit of 3 tool calls")
    assert "last tool call" in model.calls[3][-1]["content"]
    assert model.calls[0][0]["content"].startswith("Be brief.\n\nYou can use these tools:")
    assert out.usage.input_tokens == sum(
        ScriptedModel([""]).complete(c).usage.input_tokens for c in model.calls
    )


def test_bad_calls_are_reported_to_the_model() -> None:
    def f(x: int) -> int:
        """Double."""
        return 2 * x

    text, model = _loop(
        [tool_block("nope"), tool_block("f", y=1), "```tool\n[1]\n```", tool_block("f", x=4), "ok"],
        [Tool.from_function(f)],
    )
    assert text == "ok"
    feedback = [c[-1]["content"] for c in model.calls[1:]]
    assert "unknown tool 'nope'" in feedback[0]
    assert "TypeError" in feedback[1]
    assert "must be a JSON object" in feedback[2]
    assert feedback[3] == "Tool result (f):\n8"


def test_long_tool_results_are_cut() -> None:
    def big() -> str:
        """Big."""
        return "x" * 50_000

    _, model = _loop([tool_block("big"), "done"], [Tool.from_function(big)], result_chars=1000)
    fed = model.calls[1][-1]["content"]
    assert len(fed) < 1200 and "more characters" in fed


def test_spent_token_budget_stops_the_loop() -> None:
    def t() -> str:
        """T."""
        return "r"

    probe = _run_with_tools(ScriptedModel(["x"]), [t])
    first_root_turn = probe.trace.of_type(RootResponse)[0]
    tokens = first_root_turn.input_tokens + first_root_turn.output_tokens + 5
    sub = ScriptedModel([tool_block("t")] * 5, name="sub")
    result = _run_with_tools(sub, [t], budget=ctxfold.Budget(tokens=tokens))
    assert len(sub.calls) == 1  # the first sub turn spent the budget; no tool ran
    assert not result.trace.of_type(ToolCall)
    (end,) = result.trace.of_type(SubcallEnd)
    assert end.response.startswith("[error: tools: the run's tokens budget is spent")


# -- corpus tools ------------------------------------------------------------------------------

DOCS = {
    "animals/cats.txt": "Cats are small carnivorous mammals. A cat purrs and hunts mice at night.",
    "animals/dogs.txt": "Dogs are loyal companions. A dog barks, fetches sticks and guards houses.",
    "space/mars.txt": "Mars is the fourth planet from the Sun, a red planet with two moons.",
    "cooking/bread.md": "Bake bread with flour, water, yeast and salt. Knead the dough.",
    "history/rome.txt": "The Roman Empire was ruled by emperors; Augustus was the first emperor.",
}


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    for name, text in DOCS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n" + "filler line\n" * 5)
    (root / ".hidden").write_text("mars mars mars")
    return root


@pytest.mark.parametrize(
    ("query", "best"),
    [
        ("which planet is red with two moons", "space/mars.txt"),
        ("how to knead dough with yeast", "cooking/bread.md"),
        ("first emperor of the empire", "history/rome.txt"),
        ("animal that barks", "animals/dogs.txt"),
    ],
)
def test_search_ranks_the_right_document_first(
    corpus_dir: Path, tmp_path: Path, query: str, best: str
) -> None:
    hits = Corpus(corpus_dir, cache_dir=tmp_path / "cache").search(query, k=3)
    assert hits[0].doc_id == best
    assert all(".hidden" not in h.doc_id for h in hits)


def test_index_cache_is_reused_and_invalidated(corpus_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = Corpus(corpus_dir, cache_dir=cache)
    first.search("mars")
    assert first.built
    second = Corpus(corpus_dir, cache_dir=cache)
    assert second.search("mars")[0].doc_id == "space/mars.txt"
    assert not second.built  # loaded from disk
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1
    (corpus_dir / "space/venus.txt").write_text("Venus is the hottest planet, with thick clouds.")
    third = Corpus(corpus_dir, cache_dir=cache)
    assert third.search("hottest planet")[0].doc_id == "space/venus.txt" and third.built


def test_jsonl_corpus_and_tools(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text(
        "\n".join(json.dumps({"id": k, "text": v}) for k, v in DOCS.items()) + "\n",
        encoding="utf-8",
    )
    search, read, grep = corpus_tools(path, cache_dir=tmp_path / "cache")
    assert [t.name for t in (search, read, grep)] == ["search", "read", "grep"]
    assert search.parameters["required"] == ["query"]
    out = search.function(query="roman emperor augustus", k=2)
    assert out.startswith("1. [history/rome.txt]")
    page = read.function(doc_id="history/rome.txt", start=4, length=10)
    assert page.splitlines()[1] == "Roman Empi" and "continue with start=14" in page
    assert grep.function(pattern=r"\bdogs?\b").startswith("animals/dogs.txt:1:")
    assert "No lines match" in grep.function(pattern="zebra")
    with pytest.raises(KeyError):
        read.function(doc_id="nope")


def test_read_by_path_stays_inside_the_corpus(corpus_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("private")
    _, read, _ = corpus_tools(corpus_dir, cache_dir=tmp_path / "cache")
    assert "Bake bread" in read.function(doc_id=str(corpus_dir / "cooking/bread.md"))
    with pytest.raises(KeyError):
        read.function(doc_id="../outside.txt")


def test_grep_results_are_bounded(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "many.txt").write_text("hit\n" * 500)
    _, _, grep = corpus_tools(tmp_path / "c", cache_dir=tmp_path / "cache")
    lines = grep.function(pattern="hit").splitlines()
    assert len(lines) == 51 and "stopped at 50" in lines[-1]


def test_corpus_tools_in_a_run(corpus_dir: Path, tmp_path: Path) -> None:
    sub = ScriptedModel(
        lambda m: (
            tool_block("search", query="red planet moons")
            if "Tool result" not in m[-1]["content"]
            else "Mars"
            if "space/mars.txt" in m[-1]["content"]
            else "unknown"
        ),
        name="sub",
    )
    result = _run_with_tools(sub, corpus_tools(corpus_dir, cache_dir=tmp_path / "cache"))
    assert result.answer == "Mars"


# -- web search adapter ------------------------------------------------------------------------


class _SearchHandler(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append({"auth": self.headers.get("Authorization"), "body": body})
        results = [
            {"title": f"Result {i}", "url": f"https://example.org/{i}", "snippet": body["query"]}
            for i in range(8)
        ]
        payload = json.dumps({"results": results}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def search_server() -> Any:
    server = HTTPServer(("127.0.0.1", 0), _SearchHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _SearchHandler.requests = []
    yield f"http://127.0.0.1:{server.server_port}/search"
    server.shutdown()
    server.server_close()


def test_web_search_posts_query_with_key(
    search_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SEARCH_KEY", "k-123")
    tool = as_tools([WebSearch(search_server, api_key_env="TEST_SEARCH_KEY")])[0]
    assert tool.name == "web_search" and tool.parameters["required"] == ["query"]
    out = tool.function(query="rlm paper", k=2)
    assert _SearchHandler.requests == [
        {"auth": "Bearer k-123", "body": {"query": "rlm paper", "k": 2}}
    ]
    assert out.splitlines()[0] == "1. Result 0 <https://example.org/0>" and "3." not in out


def test_web_search_without_key_is_a_tool_error(
    search_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_SEARCH_KEY", raising=False)
    search = WebSearch(search_server, api_key_env="TEST_SEARCH_KEY")
    with pytest.raises(MissingAPIKeyError):
        search("x")
    _, model = _loop([tool_block("web_search", query="x"), "no web"], [search.as_tool()])
    assert "MissingAPIKeyError" in model.calls[1][-1]["content"]
    assert not _SearchHandler.requests
    assert os.environ.get("TEST_SEARCH_KEY") is None
