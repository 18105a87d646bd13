"""`ctxfold view` in a real headless Chromium (Debian's, driven by Playwright), over a real
socket: a recorded trace, a live one, a bench folder, and bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ctxfold
from ctxfold.bench import BenchSpec, run_bench
from ctxfold.models import Message, ScriptedModel

pytest.importorskip("starlette")
sync_api = pytest.importorskip("playwright.sync_api")

from ctxfold.cli.view import Viewer, start_viewer  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")


def code(src: str) -> str:
    return f"Let me look.\n```python\n{src}\n```"


def _hostile(messages: list[Message]) -> str:
    """A run whose model writes markup and script everywhere a page could show it."""
    last = messages[-1]["content"]
    if last.startswith("sub "):
        return f"<b>bold</b> reply to {last}"
    turns = sum(m["role"] == "assistant" for m in messages)
    if turns == 0:
        return code(
            "print('<script>window.__pwned = 1</script>')\n"
            "parts = llm_batch([f'sub {i}' for i in range(12)])\nprint(parts[0])"
        )
    if turns == 1:
        return code("1/0")
    return code(
        "i = context.find('Rome')\ncite(i, i + 4)\n"
        "answer['content'] = 'Rome <img src=x onerror=\"window.__pwned=2\">'\n"
        "answer['ready'] = True"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    yield page
    page.close()


@pytest.fixture
def viewers() -> Iterator[list[Viewer]]:
    started: list[Viewer] = []
    yield started
    for viewer in started:
        viewer.stop()


def _view(viewers: list[Viewer], path: Path) -> str:
    viewer = start_viewer(path)
    viewers.append(viewer)
    return viewer.url


@needs_browser
def test_a_recorded_run_shows_question_turns_subcalls_and_answer_as_text(
    tmp_path: Path, page: Any, viewers: list[Viewer]
) -> None:
    trace = tmp_path / "run.jsonl"
    with ctxfold.RLM(ScriptedModel(_hostile, name="scripted-root")) as rlm:
        rlm.run("Where does Bob live?", "Alice lives in Paris. Bob lives in Rome.\n", trace=trace)
    page.goto(_view(viewers, trace))
    page.wait_for_selector("details.turn")
    main = page.locator("main")
    assert "Where does Bob live?" in main.inner_text()
    assert (
        page.locator("#answer-0")
        .inner_text()
        .startswith('Rome <img src=x onerror="window.__pwned=2">')
    )
    assert page.locator("details.turn").count() == 3
    assert page.locator("table.subcalls tr.clickable").count() == 12
    assert page.locator("mark").inner_text() == "Rome"  # the citation, in its place
    # a turn's details load when it is opened: code, output (markup shown as text), the error
    page.locator("details.turn summary").first.click()
    page.wait_for_selector("pre.code")
    assert "<script>window.__pwned = 1</script>" in main.inner_text()
    page.locator("details.turn summary").nth(1).click()
    page.wait_for_selector("pre.err")
    assert "ZeroDivisionError" in page.locator("pre.err").first.inner_text()
    # a sub-call's prompt and reply
    page.locator("table.subcalls tr.clickable").first.click()
    page.wait_for_selector("text=Prompt")
    assert "<b>bold</b> reply to sub 0" in main.inner_text()
    # what the root model was told first: the system prompt, then the task
    page.locator("details.prompt summary").click()
    page.wait_for_selector("details.prompt .note")
    told = page.locator("details.prompt").inner_text()
    assert told.count("system") >= 1 and "Where does Bob live?" in told
    # nothing the model wrote ran, or became an element
    assert page.evaluate("window.__pwned") is None
    assert page.locator("main img, main script").count() == 0
    assert page.locator("main b", has_text="bold").count() == 0
    assert page.errors == []


@needs_browser
def test_a_live_run_appears_as_it_is_written(
    tmp_path: Path, page: Any, viewers: list[Viewer]
) -> None:
    go_on = threading.Event()

    def reply(messages: list[Message]) -> str:
        if sum(m["role"] == "assistant" for m in messages) == 0:
            return code("print('first turn')")
        go_on.wait(60)
        return code("answer['content'] = 'live done'\nanswer['ready'] = True")

    trace = tmp_path / "live.jsonl"
    trace.touch()
    url = _view(viewers, trace)
    page.goto(url)
    page.wait_for_selector("text=Waiting for the run to start")
    rlm = ctxfold.RLM(ScriptedModel(reply, name="root"))
    run = threading.Thread(target=rlm.run, args=("Is it live?", "data"), kwargs={"trace": trace})
    run.start()
    try:
        page.wait_for_selector("details.turn", timeout=20_000)  # turn 1 arrived
        assert "Running" in page.locator("#answer-0").inner_text()
        assert page.locator("#live").is_visible()
    finally:
        go_on.set()
        run.join(60)
        rlm.close()
    page.wait_for_selector("text=live done", timeout=20_000)  # then the answer
    assert page.locator("#live").is_hidden()
    assert page.errors == []


def _finder(messages: list[Message]) -> str:
    text = messages[-1]["content"]
    if "Output" in text:
        return '```python\nanswer["content"] = hits[0]\nanswer["ready"] = True\n```'
    return "```python\nimport re\nhits = re.findall(r'is: (\\d{7})', context)\nprint(hits)\n```"


@needs_browser
def test_a_bench_folder_lists_runs_that_link_to_them(
    tmp_path: Path, page: Any, viewers: list[Viewer]
) -> None:
    spec = BenchSpec(task="sniah", methods=("rlm",), lengths=(2000,), n=2, seed=1)
    root = ScriptedModel(_finder, name="scripted", context_window=8000)
    rows = run_bench(spec, tmp_path / "results.jsonl", root=root, sub=root)
    (tmp_path / "torn.jsonl").write_text('{"type": "run_start", "question": "x"')
    (tmp_path / "notes.jsonl").write_text("hello\n")
    page.goto(_view(viewers, tmp_path))
    page.wait_for_selector("#bench")
    assert page.locator("#bench tr").count() == 1 + len(rows)
    assert "not a ctxfold trace" in page.locator("#traces").inner_text()
    page.locator("#bench a").first.click()
    page.wait_for_selector("details.turn")
    assert rows[0]["instance"] and "special magic number" in page.locator("main").inner_text()
    assert page.errors == []


def test_bad_input_is_a_one_line_error(tmp_path: Path) -> None:
    not_trace = tmp_path / "data.jsonl"
    not_trace.write_text('{"name": "a row"}\n')
    for path, words in ((tmp_path / "missing.jsonl", "no such file"), (not_trace, "not a ctxfold")):
        done = subprocess.run(
            [sys.executable, "-m", "ctxfold", "view", str(path), "--no-browser"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert words in done.stderr


def test_the_api_keeps_to_its_folder_and_reads_torn_traces(
    tmp_path: Path, viewers: list[Viewer]
) -> None:
    import httpx2 as httpx

    with ctxfold.RLM(ScriptedModel([code("FINAL('x')")])) as rlm:
        rlm.run("q", "data", trace=tmp_path / "a.jsonl")
    whole = (tmp_path / "a.jsonl").read_text()
    (tmp_path / "torn.jsonl").write_text(whole[: len(whole) - 20])  # its run_end is cut off
    url = _view(viewers, tmp_path)
    for bad in ("../etc/passwd", "/etc/passwd", "a.txt"):
        assert httpx.get(f"{url}api/trace", params={"file": bad}).status_code == 400
    torn = httpx.get(f"{url}api/trace", params={"file": "torn.jsonl"}).json()
    assert torn["torn"] and torn["runs"][0]["question"] == "q" and not torn["runs"][0]["ended"]
    page = httpx.get(url)
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_ask_view_serves_the_run_it_starts(tmp_path: Path) -> None:
    from ctxfold.testing.fake_openai import FakeOpenAIServer

    (tmp_path / "in.txt").write_text("some input")
    trace = tmp_path / "run.jsonl"
    with FakeOpenAIServer(code("FINAL('viewed')")) as fake:
        model = f"openai:m@{fake.base_url}"
        command = ["ask", "q", "--context", str(tmp_path / "in.txt"), "--model", model]
        done = subprocess.run(
            [sys.executable, "-m", "ctxfold", *command, "--view", "--trace", str(trace)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "BROWSER": "true"},  # the browser it opens: a no-op
            stdin=subprocess.DEVNULL,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "viewed"
    assert "watching the run at http://127.0.0.1:" in done.stderr
    assert '"run_end"' in trace.read_text()


@needs_browser
def test_a_large_trace_shows_summaries_first_and_rows_a_hundred_at_a_time(
    tmp_path: Path, page: Any, viewers: list[Viewer]
) -> None:
    from ctxfold.testing.traces import write_big_trace

    path = tmp_path / "big.jsonl"
    write_big_trace(path, subcalls=10_000)
    page.goto(_view(viewers, path))
    page.wait_for_selector("table.subcalls tr.clickable")
    rows = page.locator("table.subcalls tr.clickable")
    assert rows.count() == 100
    assert "Sub-calls (10,000)" in page.locator("main").inner_text()
    page.get_by_role("button", name="show more").click()
    sync_api.expect(rows).to_have_count(200)
    assert page.locator("pre.code").count() == 0  # no turn's details until one is opened
    assert page.errors == []
