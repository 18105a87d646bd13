"""Attacks on the host's memory and time: what the worker sends, what a model server sends.

Memory attacks run in a child process watched by ``run_watched`` (killed past a cap), so a
regression fails the test instead of hurting the machine. The figures in the assertions are
several times what the host needs after the fixes and well under what it took before them
(``python benchmarks/host_memory_attacks.py`` prints both side by side).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

import ctxfold
from ctxfold import Budget
from ctxfold.errors import ModelError
from ctxfold.models import AnthropicModel, OpenAIModel, ScriptedModel, _tokens
from ctxfold.models._tokens import count_message_tokens
from ctxfold.sandbox import ProcessSandbox, SubcallRequest
from ctxfold.sandbox._host import MAX_VALUES, CallGate, ChannelError, _decoded, json_values
from ctxfold.sandbox._messages import MAX_ITEMS, serve_call
from ctxfold.trace import Cell

from .attack_helpers import (
    FIND_WORKER,
    FORGE_CALL_FRAME,
    SCRIPTED_RUN,
    RawServer,
    code,
    gzip_bomb,
    http_reply,
    run_watched,
)


def _echo(request: SubcallRequest) -> list[str] | dict[str, Any]:
    return {} if request.kind == "budget" else [f"echo:{i.prompt}" for i in request.items]


# -- 1. llm_batch of hundreds of thousands of items ------------------------------------------


def test_a_huge_batch_past_the_budget_is_refused_before_it_is_queued() -> None:
    source = SCRIPTED_RUN + (
        "run(['r = llm_batch([\\'\\'] * 300_000)\\nprint(len(r), r[-1][:60])'],"
        " ScriptedModel(lambda m: 'ok'), sub_calls=100)"
    )
    ran = run_watched(source, cap_mb=1500, seconds=240)
    assert ran.returncode == 0, ran.output[-2000:]
    assert "stop: sub_calls sub_calls: 100" in ran.output
    # before: 695 MB, every item queued; after: under 100 MB
    assert ran.peak_mb < 300, f"host peak {ran.peak_mb:.0f} MB"


def test_a_batch_on_a_budget_runs_only_what_the_budget_allows() -> None:
    sub = ScriptedModel(lambda messages: "ok")
    root = ScriptedModel(
        [
            code("r = llm_batch([f'p{i}' for i in range(500)])\nprint(r.count('ok'), r[-1])"),
            code("answer['content'] = 'x'\nanswer['ready'] = True"),
        ]
    )
    with ctxfold.RLM(root, sub, budget=Budget(sub_calls=100), prompt_profile="concise") as rlm:
        result = rlm.run("q", "input")
    out = result.trace.of_type(Cell)[0].stdout
    assert out.startswith("100 [error: llm_query: budget exhausted (sub_calls)")
    assert len(sub.calls) == 100 and result.usage.sub_calls == 100


def test_a_legit_batch_bigger_than_one_request_is_split_and_answered() -> None:
    sizes: list[int] = []

    def handler(request: SubcallRequest) -> list[str] | dict[str, Any]:
        sizes.append(len(request.items))
        return _echo(request)

    with ProcessSandbox() as sandbox:
        sandbox.start([], handler)
        result = sandbox.execute(
            "r = llm_batch([str(i) for i in range(10_000)])\n"
            "print(len(r), r[0], r[-1], all(a == 'echo:' + str(i) for i, a in enumerate(r)))",
            timeout=120,
        )
    assert result.error is None, result.error
    assert result.stdout == "10000 echo:0 echo:9999 True\n"
    assert sum(sizes) == 10_000 and max(sizes) <= MAX_ITEMS


def test_a_request_with_too_many_items_is_refused_whole() -> None:
    called: list[int] = []

    def handler(request: SubcallRequest) -> list[str]:
        called.append(len(request.items))
        return ["x"] * len(request.items)

    reply = serve_call(handler, {"kind": "llm", "items": [{"prompt": "p"}] * (MAX_ITEMS + 1)})
    assert isinstance(reply, str) and "at most 4,096" in reply
    assert called == []


# -- 2. one frame of tens of MB of tiny objects ---------------------------------------------


def test_a_frame_of_millions_of_tiny_objects_is_refused_undecoded() -> None:
    source = (
        "from ctxfold.sandbox import ProcessSandbox\n"
        "def handler(request):\n"
        "    return {} if request.kind == 'budget' else ['ok'] * len(request.items)\n"
        "with ProcessSandbox() as sandbox:\n"
        "    sandbox.start([], handler)\n"
        f"    result = sandbox.execute({FORGE_CALL_FRAME.format(count=3_000_000)!r}, timeout=120)\n"
        "    print(result.stdout.strip(), result.error)\n"
        "    print(sandbox.execute('print(llm_query(\"still\"))').stdout.strip())\n"
    )
    ran = run_watched(source, cap_mb=2500, seconds=240)
    assert ran.returncode == 0, ran.output[-2000:]
    assert "sent 42000044 None" in ran.output and ran.output.rstrip().endswith("ok")
    # before: 973 MB while decoding and answering; after: about 150 MB
    assert ran.peak_mb < 450, f"host peak {ran.peak_mb:.0f} MB"


def test_values_are_counted_without_decoding() -> None:
    # 4 strings + 3 commas + 2 brackets outside strings + 1; none of those inside "x,y,[{"
    assert json_values(json.dumps({"a": [1, 2, "x,y,[{"], "b": 'q\\"'}).encode()) == 10
    calls = b",".join([b'{"prompt":""}'] * 150_000)
    refused = _decoded(b'{"op":"call","id":9,"kind":"llm","items":[' + calls + b"]}")
    assert refused["id"] == 9 and "200,000" in refused["refused"]
    with pytest.raises(ChannelError, match="over the limit"):
        _decoded(b'{"op":"result","x":[' + b",".join([b"[]"] * MAX_VALUES) + b"]}")
    with pytest.raises(ValueError, match="dropped"):  # other garbage is dropped
        _decoded(b"[" * MAX_VALUES + b"]" * MAX_VALUES)
    # a big frame of few values (a long prompt full of commas and brackets) is decoded
    prompt = json.dumps("a, [b], {c}, " * 500_000)
    legit = f'{{"op":"call","id":3,"kind":"llm","items":[{{"prompt":{prompt}}}]}}'.encode()
    assert _decoded(legit)["items"][0]["prompt"].startswith("a, [b]")


def test_requests_waiting_for_answers_are_bounded() -> None:
    gate = CallGate(max_calls=2, max_bytes=100)
    assert gate.admit(10) is None and gate.admit(10) is None
    assert "too many" in (gate.admit(10) or "")
    gate.release(10)
    assert gate.admit(95) is not None  # bytes: 10 + 95 > 100
    assert gate.admit(80) is None


def test_a_flood_of_concurrent_requests_gets_errors_not_a_queue() -> None:
    inside = threading.Semaphore(0)
    release = threading.Event()

    def slow(request: SubcallRequest) -> list[str] | dict[str, Any]:
        if request.kind == "budget":
            return {}
        inside.release()
        release.wait(30)
        return ["ok"] * len(request.items)

    flood = (
        "import threading\n"
        "out = []\n"
        "def ask():\n"
        "    out.append(llm_query('p'))\n"
        "threads = [threading.Thread(target=ask) for _ in range(100)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "print(out.count('ok'), sum(o.startswith('[error: too many') for o in out))"
    )
    with ProcessSandbox() as sandbox:
        sandbox.start([], slow)
        timer = threading.Timer(3.0, release.set)
        timer.start()
        result = sandbox.execute(flood, timeout=120)
        timer.join()
    answered, refused = map(int, result.stdout.split())
    assert answered + refused == 100
    assert refused >= 100 - 64 and answered <= 64


# -- 3. cell-result fields carried from a patched worker ------------------------------------

_PATCH_RESTORED = FIND_WORKER + (
    'type(_find_worker())._restore_scaffold = lambda self: ["n" * 100] * 30_000\nprint("patched")'
)


def test_fields_from_a_patched_worker_are_cut_on_the_host() -> None:
    done = code("answer['content'] = 'x'; answer['ready'] = True")
    root = ScriptedModel([code(_PATCH_RESTORED), code("print(1)"), done])
    with ctxfold.RLM(root, budget=Budget(iterations=3), prompt_profile="concise") as rlm:
        result = rlm.run("q", "input")
    cells = result.trace.of_type(Cell)
    assert all(len(c.restored) <= 64 and all(len(n) <= 80 for n in c.restored) for c in cells)
    assert cells[0].restored[-1] == "... and 29,937 more" and not cells[0].restarted
    sizes = [len(m["content"]) for messages in root.calls for m in messages]
    assert max(sizes) < 60_000, max(sizes)


# -- 4. counting tokens of a huge prompt -----------------------------------------------------


def test_huge_texts_are_counted_from_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "The quick brown fox jumps over the lazy dog, 12345. " * 20_000  # 1 MB
    exact = _tokens._encoder(text)
    seen: list[int] = []
    real = _tokens._encoder

    def recording(sample: str) -> int:
        seen.append(len(sample))
        return real(sample)

    monkeypatch.setattr(_tokens, "_encoder", recording)
    estimate = _tokens.count_tokens(text * 20)  # 20 MB
    assert max(seen) <= _tokens.EXACT_LIMIT and sum(seen) <= 100_000
    assert abs(estimate - 20 * exact) < 0.02 * 20 * exact


# -- 5. model servers: inflating bodies, huge bodies, no answer ------------------------------

_CHAT = json.dumps({"choices": [{"message": {"content": "hi"}}]}).encode()
_MSGS = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize("client", ["openai-sync", "openai-async", "anthropic"])
def test_a_compressed_reply_that_inflates_past_the_bound_fails_once(client: str) -> None:
    bomb = http_reply(gzip_bomb(256), "Content-Encoding: gzip")
    with RawServer(bomb) as server:
        if client == "anthropic":
            model: Any = AnthropicModel("m", base_url=server.url, api_key="k", timeout=10)
        else:
            model = OpenAIModel("m", base_url=server.url, timeout=10)
        with pytest.raises(ModelError, match="inflates past"):
            if client == "openai-async":
                import asyncio

                asyncio.run(model.acomplete(_MSGS))
            else:
                model.complete(_MSGS)
        model.close()
        assert server.requests == 1  # not retried: asking again changes nothing


def test_an_announced_huge_body_is_refused_before_it_is_read() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 900000000\r\n\r\n"
    with RawServer(head + b"{") as server:
        model = OpenAIModel("m", base_url=server.url, timeout=5)
        with pytest.raises(ModelError, match="announced a 900,000,000-byte reply"):
            model.complete(_MSGS)
        model.close()


def test_a_chunked_body_past_the_bound_is_refused() -> None:
    chunk = b"%x\r\n%s\r\n" % (2**20, b" " * 2**20)
    body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 40 + b"0\r\n\r\n"
    with RawServer(body) as server:
        model = OpenAIModel("m", base_url=server.url, timeout=10)
        with pytest.raises(ModelError, match="over 33,554,432 bytes"):
            model.complete(_MSGS)
        model.close()


def test_a_server_that_never_answers_cannot_outlive_the_deadline() -> None:
    with RawServer(None) as server:
        model = OpenAIModel("m", base_url=server.url, timeout=5)
        with pytest.raises(ModelError, match="time budget ran out"):
            model.complete(_MSGS, deadline=time.monotonic() + 1.0)
        model.close()
        assert server.requests == 1


def test_a_run_with_a_silent_sub_model_ends_within_its_seconds() -> None:
    with RawServer(None) as server:
        sub = OpenAIModel("m", base_url=server.url, timeout=5)
        root = ScriptedModel([code("r = llm_query('x')\nprint(r)")] * 3)
        with ctxfold.RLM(root, sub, budget=Budget(seconds=2.0), prompt_profile="concise") as rlm:
            result = rlm.run("q", "input")
        sub.close()
    assert result.stop_reason == "seconds"
    assert "time budget ran out" in result.trace.of_type(Cell)[0].stdout
    assert server.requests == 1


# -- 6. a cell that keeps a sub-call in flight while it computes -----------------------------

_HOLD_AND_COMPUTE = """
import threading, time
stop = False
def hold():
    while not stop:
        llm_query("x")
threading.Thread(target=hold, daemon=True).start()
time.sleep(0.2)
started = time.time()
while time.time() - started < 20:
    pass
stop = True
print("computed for 20 s")
"""


def test_a_cell_cannot_outrun_its_limit_behind_a_sub_call_in_flight() -> None:
    def slow(request: SubcallRequest) -> list[str] | dict[str, Any]:
        if request.kind == "budget":
            return {}
        time.sleep(1.0)
        return ["ok"] * len(request.items)

    with ProcessSandbox() as sandbox:
        sandbox.start([], slow)
        result = sandbox.execute(_HOLD_AND_COMPUTE, timeout=2)
        assert result.timed_out and "computed" not in result.stdout
        # waiting on sub-calls still does not count
        waited = sandbox.execute("print([llm_query(str(i)) for i in range(3)])", timeout=1)
    assert not waited.timed_out and waited.stdout == "['ok', 'ok', 'ok']\n"


# -- 7. child RLMs spend the run's budgets ---------------------------------------------------


def _tree_model(calls: list[str]) -> ScriptedModel:
    """Top root: start 20 children, then answer. Child roots: sub-calls forever. Sub-calls: ok."""

    def reply(messages: list[dict[str, Any]]) -> str:
        task = next(m["content"] for m in messages if m["role"] == "user")
        if messages[-1]["content"].startswith("sub "):
            calls.append("sub")
            return "ok"
        if "TOP QUESTION" in task:
            calls.append("top")
            if sum(m["role"] == "assistant" for m in messages) == 0:
                return code("r = rlm_batch([f'child {i}' for i in range(20)])\nprint(r[:2])")
            return code("answer['content'] = 'done'\nanswer['ready'] = True")
        calls.append("child")
        return code("print(llm_batch(['sub a', 'sub b']))")

    return ScriptedModel(reply)


def test_children_count_against_the_sub_call_budget() -> None:
    calls: list[str] = []
    model = _tree_model(calls)
    budget = Budget(depth=2, sub_calls=2, iterations=4)
    with ctxfold.RLM(model, budget=budget, prompt_profile="concise") as rlm:
        result = rlm.run("TOP QUESTION", "input")
    assert result.stop_reason == "sub_calls"
    assert calls.count("child") + calls.count("sub") == 2, calls
    # and no child started once the budget was spent: 2 sandboxes at most
    assert len({e.call_id for e in result.trace if getattr(e, "kind", "") == "rlm"}) <= 2


def test_children_stop_at_the_token_budget_without_a_last_word() -> None:
    calls: list[str] = []
    model = _tree_model(calls)
    budget = Budget(depth=2, tokens=3000, iterations=4)
    with ctxfold.RLM(model, budget=budget, prompt_profile="concise", concurrency=2) as rlm:
        result = rlm.run("TOP QUESTION", "input")
    biggest = max(count_message_tokens(messages) for messages in model.calls) + 100
    # Only the calls already in flight when it ran out (concurrency 2) overshoot the budget.
    assert result.usage.total_tokens <= 3000 + 2 * biggest, (result.usage.total_tokens, biggest)
    last_words = [
        messages
        for messages in model.calls
        if "budget is spent" in messages[-1]["content"] and "TOP QUESTION" not in str(messages)
    ]
    assert last_words == []
