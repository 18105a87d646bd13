"""Guard rails and demonstrations for small root models (issue 7)."""

from __future__ import annotations

import ast

import pytest

import ctxfold
from ctxfold import prompts
from ctxfold.models import Message, ScriptedModel
from ctxfold.trace import Cell, Guard


def code(src: str) -> str:
    return f"```python\n{src}\n```"


def test_repeated_code_is_not_run_again_and_the_model_is_told() -> None:
    seen: list[str] = []
    search = 'hits = [l for l in context.split("\\n") if "needle phrase" in l]\nprint(len(hits))'

    def root(messages: list[Message]) -> str:
        seen.append(messages[-1]["content"])
        if len(seen) <= 2:  # the same cell twice, with only whitespace changed the second time
            return code(search if len(seen) == 1 else search.replace(" if", "  if"))
        if len(seen) == 3:
            return code('print("needle" in context)')
        return code('answer["content"] = "found"\nanswer["ready"] = True')

    rlm = ctxfold.RLM(model=ScriptedModel(root), prompt_profile="small")
    result = rlm.run("Where is the needle?", context="hay\nhay with a needle\nhay")
    assert result.ready and result.answer == "found"
    assert len(result.trace.of_type(Cell)) == 3  # the repeat did not run
    assert "same code you ran at turn 1" in seen[2]
    guards = [g.reason for g in result.trace.of_type(Guard)]
    assert guards == ["code repeated from turn 1"]


def test_a_refused_ready_may_be_sent_again_unchanged() -> None:
    final = code('answer["content"] = "42"\nanswer["ready"] = True')
    rlm = ctxfold.RLM(model=ScriptedModel([final, final]))
    result = rlm.run("q", context="data")
    assert result.ready and result.answer == "42" and result.iterations == 2


@pytest.mark.parametrize(
    ("question", "sub_calls", "expected"),
    [
        ("What is the special magic number for brave-lantern?", True, "search"),
        ("How many instances have the label 'entity'?", True, "count"),
        ("Which label is the least common among all the instances?", True, "count"),
        ("Which label is the least common among all the instances?", False, "search"),
        (
            "Is the label 'entity' more common, less common, or equally common compared with the "
            "label 'location'? Answer with one of: more common, less common, equally common.",
            True,
            "compare",
        ),
        ("Which class defines the method `joinpath`?", True, "code"),
        # fields, tags and patterns: counted in code, not by labelling every line
        ("How many ERROR lines come from the payments service?", True, "tally"),
        ("How many top-level functions does the file json/decoder.py define?", True, "tally"),
        ("Count the users who signed in twice.", False, "tally"),
        ("Which other file calls it?", False, "code"),
        ("", True, "search"),
    ],
)
def test_the_demonstration_nearest_to_the_question_is_picked(
    question: str, sub_calls: bool, expected: str
) -> None:
    assert prompts.pick_demonstration(question, sub_calls=sub_calls).name == expected


@pytest.mark.parametrize("demo", prompts.demonstrations(), ids=lambda d: d.name)
def test_demonstrations_are_well_formed(demo: prompts.Demonstration) -> None:
    roles = [t["role"] for t in demo.turns]
    assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
    assert demo.turns[0]["content"].startswith("`context`: ")  # as the task message: question last
    assert "\n\nQuestion: " in demo.turns[0]["content"]
    assert demo.turns[-1]["content"] == "Done. New task."
    blocks = [b for t in demo.turns if t["role"] == "assistant" for b in _blocks(t["content"])]
    for block in blocks:
        ast.parse(block)  # every demonstrated cell is valid Python
    assert 'answer["ready"] = True' in blocks[-1]
    assert ("llm_batch" in "".join(blocks)) == demo.needs_subcalls


def test_the_root_is_shown_the_picked_demonstration() -> None:
    first: list[list[Message]] = []

    def root(messages: list[Message]) -> str:
        first.append(list(messages))
        return code('print(1)\nanswer["content"] = "3"\nanswer["ready"] = True')

    rlm = ctxfold.RLM(model=ScriptedModel(root), prompt_profile="small")
    # a question only reading can decide (issue 14: "how many" alone now picks counting by code)
    question = "Each line has one label, 'pet' or 'pest'. Which label is the most common?"
    rlm.run(question, context="cat\ndog\ncat")
    shown = "\n".join(m["content"] for m in first[0])
    assert "llm_batch(texts, choices=labels)" in shown and "tickets" in shown
    assert "spring sale" not in shown
    task = first[0][-1]["content"]
    assert task.startswith("Done. New task.\n\n`context`: ")
    assert f"Question: {question}" in task.splitlines()[-3]


def _blocks(text: str) -> list[str]:
    parts = text.split("```python\n")[1:]
    return [p.split("\n```")[0] for p in parts]


def test_the_question_is_a_variable_in_the_repl_and_survives_a_restart() -> None:
    rlm = ctxfold.RLM(
        model=ScriptedModel(
            [
                code("print(question.upper())"),
                code("import os\nos._exit(3)"),
                code('print(question)\nanswer["content"] = question[::-1]\nanswer["ready"] = True'),
            ]
        )
    )
    result = rlm.run("Where's the 'needle'?", context="hay")
    cells = result.trace.of_type(Cell)
    assert cells[0].stdout.strip() == "WHERE'S THE 'NEEDLE'?"
    assert cells[1].restarted and cells[2].stdout.strip() == "Where's the 'needle'?"
    assert result.answer == "?'eldeen' eht s'erehW"


def test_the_first_model_cell_is_cell_1_despite_the_question_set_up_cell() -> None:
    rlm = ctxfold.RLM(
        model=ScriptedModel(
            [
                code("print(question)\n1 / 0"),
                code('answer["content"] = "done"\nanswer["ready"] = True'),
            ]
        )
    )
    result = rlm.run("Where is the needle?", context="hay")
    first = result.trace.of_type(Cell)[0]
    assert first.stdout.strip() == "Where is the needle?"  # the set-up cell ran
    assert first.error is not None and '"<cell 1>", line 2' in first.error
    assert result.ready


def test_a_strong_models_profile_runs_no_repeated_code_guard() -> None:
    """The repeated-code guard is the small profile's switch, not a rule of the loop."""
    same = code("print(len(context))")
    done = code('answer["content"] = "4"\nanswer["ready"] = True')
    rlm = ctxfold.RLM(model=ScriptedModel([same, same, done]), prompt_profile="concise")
    result = rlm.run("q", context="data")
    assert result.answer == "4"
    assert [c.stdout for c in result.trace.of_type(Cell)][:2] == ["4\n", "4\n"]
    assert not [g for g in result.trace.of_type(Guard) if "repeated" in g.reason]
    assert prompts.profile("small").repeated_code_guard
    assert not prompts.profile("concise").repeated_code_guard
