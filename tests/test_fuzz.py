"""Bad input, fuzzed: every call either runs normally or raises a one-line CtxfoldError; the CLI
exits 2 with one ``ctxfold: error:`` line. Never another exception, never a traceback."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ctxfold
from conftest import worker_children
from ctxfold.models import ScriptedModel

# Prints (so the early-ready guard lets the answer through on the next turn) and answers.
REPLY = '```python\nprint("looked")\nFINAL("x")\n```'
FEW = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DEAD_URL = "openai:x@http://127.0.0.1:9/v1"  # never contacted: each case fails before a call

surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
any_text = st.text(st.one_of(st.characters(), surrogates), max_size=40)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), any_text)
non_json = st.one_of(
    st.sets(st.integers(), max_size=3),
    st.builds(object),
    st.binary(max_size=8),
    st.complex_numbers(),
)
nested = st.recursive(
    st.one_of(json_leaf, non_json),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(any_text, st.integers(), st.tuples(st.integers())), inner),
    ),
    max_leaves=12,
)
contexts = st.one_of(
    st.none(),
    st.just(""),
    any_text,
    st.binary(max_size=64),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sets(st.integers(), max_size=3),
    st.builds(object),
    nested,
)
budget_fields = st.sampled_from(
    ["iterations", "depth", "tokens", "usd", "seconds", "cell_seconds", "sub_calls", "max_errors"]
)
budget_values = st.one_of(
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e-9, 1e300]),
    st.text(max_size=4),
    st.booleans(),
    st.none(),
    st.builds(object),
)
model_specs = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            ":",
            "@",
            "openai:",
            "openai:@http://h/v1",
            "openai:x@",
            "openai:x@ftp://h",
            "openai:x@http://[",
            "openai:x@http://h:99999/v1",
            "openai:x@http://h\x00/v1",
            "openai:x@http://h /v1",
            "anthropic:",
            "local:",
            "local:no-such-model",
            "gpt:foo",
        ]
    ),
    any_text.filter(lambda s: s.strip().lower() != "local"),  # "local" would load the real model
    st.integers(),
    st.none(),
    st.builds(object),
)
questions = st.one_of(
    st.just(""), st.text(" \t\n\r", max_size=5), any_text, st.integers(), st.none(), st.binary()
)


def scripted() -> ScriptedModel:
    return ScriptedModel(lambda messages: REPLY)


def one_line(exc: ctxfold.CtxfoldError) -> None:
    text = str(exc)
    assert text.strip() and "\n" not in text, repr(text)


def run(
    question: Any = "what is in it?",
    context: Any = None,
    budget: ctxfold.Budget | None = None,
    **kwargs: Any,
) -> ctxfold.Result | None:
    """One run with a scripted root; None when it raised a (one-line) CtxfoldError."""
    try:
        with ctxfold.RLM(model=scripted(), budget=budget) as rlm:
            result = rlm.run(question, context, **kwargs)
    except ctxfold.CtxfoldError as exc:
        one_line(exc)
        return None
    assert isinstance(result.answer, str) and result.stop_reason
    return result


# -- the API -------------------------------------------------------------------------------


@FEW
@given(context=contexts)
def test_any_context(context: Any, no_orphans: None) -> None:
    result = run(context=context)
    if result is not None:
        assert result.ready and result.answer == "x"


@FEW
@given(items=st.one_of(st.lists(contexts, max_size=3), contexts))
def test_any_contexts_list(items: Any, no_orphans: None) -> None:
    run(contexts=items)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(min_size=1, max_size=200))
def test_any_file_bytes(data: bytes, no_orphans: None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "input.txt"
        path.write_bytes(data)
        result = run(context=path)
        if result is not None:  # only UTF-8 text without NUL bytes is read as a file
            assert b"\x00" not in data
            data.decode("utf-8")


def test_invalid_utf8_file_and_folder(tmp_path: Path, no_orphans: None) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok so far \xff\xfe then garbage")
    with ctxfold.RLM(model=scripted()) as rlm, pytest.raises(ctxfold.ContextError) as info:
        rlm.run("q", bad)
    assert "not UTF-8" in str(info.value)
    one_line(info.value)
    folder = tmp_path / "only-binary"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"\x00\x01")
    assert run(context=folder) is None


def test_lone_surrogates_everywhere(tmp_path: Path, no_orphans: None) -> None:
    trace = tmp_path / "t.jsonl"
    for context in ["a\ud800b", {"k\udfff": ["\udc80"]}, ["\ud83d"]]:
        result = run("what\ud800?", context, trace=trace)
        assert result is not None and result.ready, context
    assert trace.read_text(encoding="utf-8")  # written, as valid UTF-8


def test_deeply_nested_list_is_a_context_error(no_orphans: None) -> None:
    deep: list[Any] = []
    node = deep
    for _ in range(50_000):
        node.append([])
        node = node[0]
    assert run(context=deep) is None


@settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck))
@given(megabytes=st.integers(8, 24), as_bytes=st.booleans())
def test_very_large_context(megabytes: int, as_bytes: bool, no_orphans: None) -> None:
    text = "line of text\n" * (megabytes * 1024 * 1024 // 13)  # built here, not by hypothesis
    result = run(context=text.encode() if as_bytes else text)
    assert result is not None and result.ready


@settings(max_examples=40, deadline=None)
@given(field=budget_fields, value=budget_values)
def test_any_budget_value(field: str, value: Any) -> None:
    try:
        budget = ctxfold.Budget(**{field: value})
    except ctxfold.BudgetError as exc:
        one_line(exc)
        return
    number = getattr(budget, field)
    assert number is None or (not isinstance(number, bool) and not math.isnan(number))
    if number is not None:
        assert number >= 0


@FEW
@given(field=budget_fields, value=budget_values)
def test_runs_with_any_valid_budget(field: str, value: Any, no_orphans: None) -> None:
    try:
        budget = ctxfold.Budget(**{field: value})
    except ctxfold.BudgetError:
        return
    if field == "cell_seconds" and isinstance(value, int | float) and value < 1:
        return  # every cell would time out and restart its worker: correct, but slow
    run(context="data", budget=budget)


def test_infinite_limits_mean_unlimited(no_orphans: None) -> None:
    budget = ctxfold.Budget(usd=math.inf, seconds=math.inf, cell_seconds=math.inf)
    result = run(context="data", budget=budget)
    assert result is not None and result.ready
    for field in ("usd", "seconds", "cell_seconds", "iterations", "tokens"):
        with pytest.raises(ctxfold.BudgetError):
            nan: dict[str, Any] = {field: math.nan}
            ctxfold.Budget(**nan)


@settings(max_examples=40, deadline=None)
@given(spec=model_specs)
def test_any_model_spec(spec: Any) -> None:
    try:
        rlm = ctxfold.RLM(model=spec)
    except ctxfold.CtxfoldError as exc:
        one_line(exc)
        return
    rlm.close()  # a spec that parses: not run (it may name a host on the network)


@settings(max_examples=25, deadline=None)
@given(question=questions)
def test_any_question(question: Any) -> None:
    rlm = ctxfold.RLM(model=scripted(), sandbox=_NoSandbox())
    try:
        rlm.run(question, "data")
    except ctxfold.CtxfoldError as exc:
        one_line(exc)
    except _Ran:
        assert isinstance(question, str) and question.strip()


class _Ran(Exception):
    """Raised by _NoSandbox once a valid question got as far as the run (checked elsewhere)."""


class _NoSandbox:
    isolation = "none"

    def start(self, *args: Any, **kwargs: Any) -> None:
        raise _Ran

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        raise _Ran

    def setup(self, *args: Any, **kwargs: Any) -> Any:
        raise _Ran

    def close(self) -> None:
        pass


def test_odd_questions_run(no_orphans: None) -> None:
    for question in ["\ud800", "?", "x" * 100_000, "multi\nline\n"]:
        result = run(question, "data")
        assert result is not None and result.ready


# -- the command line ----------------------------------------------------------------------


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
    proc = subprocess.run(
        [sys.executable, "-m", "ctxfold", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode(errors="replace")
    )


def assert_usage_error(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctxfold: error:"), proc.stderr
    assert "Traceback" not in proc.stderr


def _positive_int(text: str) -> bool:
    try:
        return int(text) > 0
    except ValueError:
        return False


def _workers() -> set[int]:
    return worker_children()


argv_text = st.text(
    st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=20
).filter(lambda s: not s.startswith("-"))
CLI = settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))


@CLI
@given(junk=st.binary(min_size=1, max_size=64))
def test_cli_invalid_utf8_file(junk: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in.txt"
        path.write_bytes(b"\xff" + junk)  # never valid UTF-8
        assert_usage_error(cli("ask", "q", "--context", str(path), "-m", DEAD_URL))


@CLI
@given(spec=argv_text)
def test_cli_nonsense_model_spec(spec: str) -> None:
    assert_usage_error(cli("ask", "q", "--model", f"nonsense{spec}"))


@CLI
@given(
    value=st.one_of(argv_text.filter(lambda s: not _positive_int(s)), st.integers(-5, 0).map(str))
)
def test_cli_nonsense_iterations(value: str) -> None:
    assert_usage_error(cli("ask", "q", "-m", DEAD_URL, "--max-iterations", value))


def test_cli_empty_question_and_binary_stdin() -> None:
    before = _workers()
    assert_usage_error(cli("ask", "  ", "-m", DEAD_URL))
    assert_usage_error(cli("ask", "q", "-c", "-", "-m", DEAD_URL, stdin=b"\xff\xfe\x00"))
    assert_usage_error(cli("ask", "q", "-m", "openai:x@http://["))
    assert _workers() <= before
