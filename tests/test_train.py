"""`ctxfold train rollouts` and `ctxfold train export`, with the fake OpenAI server as the model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ctxfold
from ctxfold.cli import main
from ctxfold.models import ScriptedModel
from ctxfold.testing.fake_openai import FakeOpenAIServer
from ctxfold.train import export_examples, recorded_runs


def _finder(messages: list[dict[str, Any]]) -> str:
    """Solves S-NIAH with code: find the numbers, then answer the first."""
    text = messages[-1]["content"]
    if "Output" in text:
        return '```python\nanswer["content"] = hits[0]\nanswer["ready"] = True\n```'
    return "```python\nimport re\nhits = re.findall(r'is: (\\d{7})', context)\nprint(hits)\n```"


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("rollouts")
    with FakeOpenAIServer(_finder) as fake:
        args = ["train", "rollouts", "sniah", "--n", "4", "--lengths", "2000", "--seed", "3"]
        args += ["--model", f"openai:fake@{fake.base_url}", "--samples", "2", "--out", str(out)]
        assert main([*args, "--quiet"]) == 0
        requests = list(fake.requests)
        assert main([*args, "--quiet"]) == 0  # resumed: nothing left to run
        assert len(fake.requests) == len(requests)
    return out, requests


def test_rollouts_sample_each_instance_and_keep_traces_and_scores(
    rollouts: tuple[Path, list[dict[str, Any]]],
) -> None:
    out, requests = rollouts
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["method"] for r in rows} == {"rlm"}
    assert sorted(r["sample"] for r in rows) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert all(re.fullmatch(r".+~s[01]", r["instance"]) for r in rows)
    assert all((out / r["trace"]).is_file() for r in rows)
    # the finder solves the number variants, not the UUID one: both samples of it fail
    assert sorted(r["score"] for r in rows) == [0.0] * 2 + [1.0] * 6
    # sampled: a temperature, and the sample's number as the seed
    assert {(r["temperature"], r["seed"]) for r in requests} == {(0.7, 0), (0.7, 1)}


def test_export_writes_whole_root_conversations_split_by_instance(
    rollouts: tuple[Path, list[dict[str, Any]]], tmp_path: Path, capsys: Any
) -> None:
    out, _ = rollouts
    data = tmp_path / "data.jsonl"
    args = ["train", "export", str(out), "--out", str(data), "--min-score", "1"]
    assert main([*args, "--val-fraction", "0.5", "--seed", "1"]) == 0
    train = [json.loads(line) for line in data.read_text().splitlines()]
    val = [json.loads(line) for line in (tmp_path / "data.val.jsonl").read_text().splitlines()]
    # the fake model is greedy: each instance's two samples are one conversation, kept once
    assert len(train) + len(val) == 3 and train and val
    for example in train + val:
        roles = [m["role"] for m in example["messages"]]
        assert roles[0] == "system" and roles[-1] == "assistant"
        assert roles[-4:] == ["user", "assistant", "user", "assistant"]
        assert "special magic number" in example["messages"][-4]["content"]  # the task
        assert "re.findall" in example["messages"][-3]["content"]  # the first reply
        assert example["messages"][-2]["content"].startswith("Output")  # its feedback
    report = json.loads((tmp_path / "data.report.json").read_text())
    assert (report["runs"], report["below_score"]) == (8, 2)
    assert (report["kept"], report["duplicates"]) == (3, 3)
    assert report["train_instances"] + report["val_instances"] == 3
    assert "kept 3" in capsys.readouterr().out


def test_export_from_user_traces_keeps_runs_that_ended_ready(tmp_path: Path) -> None:
    code = "```python\n{}\n```"
    ready = ScriptedModel([code.format("print(len(context))"), code.format("FINAL('five')")])
    unfinished = ScriptedModel([code.format("print(1)")] * 3)
    ctxfold.RLM(ready).run("How long?", "12345", trace=tmp_path / "a.jsonl")
    budget = ctxfold.Budget(iterations=2)
    ctxfold.RLM(unfinished, budget=budget).run("q", "x", trace=tmp_path / "b.jsonl")
    runs = list(recorded_runs(tmp_path))
    assert [r.ready for r in runs] == [True, False]
    report = export_examples([tmp_path], tmp_path / "out" / "d.jsonl", val_fraction=0)
    assert (report.kept, report.not_ready, report.val_examples) == (1, 1, 0)
    [example] = [
        json.loads(line) for line in (tmp_path / "out" / "d.jsonl").read_text().splitlines()
    ]
    assert example["messages"][-1]["content"] == code.format("FINAL('five')")


def _ctxfold(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctxfold", *args], capture_output=True, text=True, timeout=120
    )


def test_bad_exports_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.jsonl").write_text(
        json.dumps({"instance": "a", "method": "base", "score": 1.0}) + "\n"
    )
    (tmp_path / "notes.jsonl").write_text("not json\n")
    cases = [
        (tmp_path / "bench", "no scored runs with a trace"),
        (tmp_path / "missing", "no such file or folder"),
        (tmp_path / "notes.jsonl", "notes.jsonl"),
    ]
    for source, words in cases:
        done = _ctxfold("train", "export", str(source), "--out", str(tmp_path / "d.jsonl"))
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert words in done.stderr
    bad = _ctxfold("train", "rollouts", "sniah", "--samples", "0", "--out", str(tmp_path / "r"))
    assert bad.returncode == 2 and "--samples must be at least 1" in bad.stderr


def _delegator(messages: list[dict[str, Any]]) -> str:
    """A root that asks a sub-call for the needle's line and answers with it; the sub-call
    (the same fake model, told apart by its prompt) answers with the number."""
    text = messages[-1]["content"]
    if text.startswith("Find the magic number"):
        return re.findall(r"is: (\d{7})", text)[0]
    if "Output" in text:
        return '```python\nanswer["content"] = found\nanswer["ready"] = True\n```'
    return (
        "```python\nline = [l for l in context.splitlines() if 'magic number' in l][0]\n"
        "found = llm_query('Find the magic number in this text. ' + 'Read it carefully. ' * 20"
        " + line)\nprint(found)\n```"
    )


def test_export_turns_sub_writes_each_answered_sub_call_in_full(
    tmp_path: Path, capsys: Any
) -> None:
    out, data = tmp_path / "rollouts", tmp_path / "sub.jsonl"
    with FakeOpenAIServer(_delegator) as fake:
        args = ["train", "rollouts", "sniah", "--n", "2", "--lengths", "1500", "--seed", "2"]
        assert (
            main([*args, "--model", f"openai:fake@{fake.base_url}", "--out", str(out), "-q"]) == 0
        )
    export = ["train", "export", str(out), "--min-score", "1", "--val-fraction", "0"]
    assert main([*export, "--turns", "sub", "--out", str(data)]) == 0
    subs = [json.loads(line)["messages"] for line in data.read_text().splitlines()]
    assert len(subs) == 2  # one sub-call per run, both runs right
    for messages in subs:
        assert [m["role"] for m in messages] == ["user", "assistant"]
        prompt = messages[0]["content"]
        assert len(prompt) > 400 and "is: " in prompt  # the whole prompt, not a preview
        assert re.fullmatch(r"\d{7}", messages[1]["content"])
    assert "examples: 0 root, 2 sub-call" in capsys.readouterr().out
    both = tmp_path / "all.jsonl"
    assert main([*export, "--turns", "all", "--out", str(both)]) == 0
    kinds = [json.loads(line)["messages"][0]["role"] for line in both.read_text().splitlines()]
    assert sorted(kinds) == ["system", "system", "user", "user"]
    # a trace made without recording sub-call messages has none to give
    plain = tmp_path / "plain.jsonl"
    with FakeOpenAIServer(_delegator) as fake:
        rlm = ctxfold.RLM(f"openai:fake@{fake.base_url}")
        rlm.run("What is the magic number?", "x\nthe magic number is: 1234567\n", trace=plain)
        rlm.close()
    assert recorded_runs(plain).__next__().subcalls == []


def test_a_demonstration_in_the_prompt_is_exported_with_weight_zero(tmp_path: Path) -> None:
    code = "```python\n{}\n```"
    model = ScriptedModel([code.format("print(len(context))"), code.format("FINAL('five')")])
    rlm = ctxfold.RLM(model, prompt_profile="small")  # its prompt holds demonstration turns
    rlm.run("How long?", "12345", trace=tmp_path / "t.jsonl")
    [run] = recorded_runs(tmp_path / "t.jsonl")
    replies = [m for m in run.messages if m["role"] == "assistant"]
    demo, own = replies[:-2], replies[-2:]
    assert demo and all(m["weight"] == 0 for m in demo)
    assert [m["content"] for m in own] == [
        code.format("print(len(context))"),
        code.format("FINAL('five')"),
    ]
    assert all("weight" not in m for m in own)
    report = export_examples([tmp_path / "t.jsonl"], tmp_path / "d.jsonl", val_fraction=0)
    assert report.mean_turns == 2.0  # the run's own replies, not the demonstration's
