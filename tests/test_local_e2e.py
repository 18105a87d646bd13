"""One whole RLM run on the real embedded local model (slow: deselect with -m 'not slow')."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

import ctxfold
from ctxfold.models import ScriptedModel
from ctxfold.models._weights import list_local_models
from ctxfold.trace import Cell

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from make_demo_input import ANSWER, QUESTION, make_log

pytestmark = pytest.mark.slow


def _local_ready() -> bool:
    if importlib.util.find_spec("xllamacpp") is None:
        return False
    return any(m.installed for m in list_local_models() if m.name.endswith("0.5b"))


@pytest.mark.skipif(not _local_ready(), reason="pip install 'ctxfold[local]' to run")
def test_local_model_finds_the_planted_fact(tmp_path: Path, no_orphans) -> None:
    log = tmp_path / "app.log"
    log.write_text(make_log(0.4, seed=7))  # 400 KB: about 100K tokens, 3x the model's window
    with ctxfold.RLM(model="local", budget=ctxfold.Budget(iterations=6)) as rlm:
        result = rlm.run(QUESTION, context=log)
    assert ANSWER in result.answer, [c.stdout for c in result.trace.of_type(Cell)]
    assert result.ready
    # The root model never saw the input: its prompts stayed far below the input's size.
    assert result.usage.root_input_tokens < 40_000


@pytest.mark.skipif(not _local_ready(), reason="pip install 'ctxfold[local]' to run")
def test_local_sub_calls_with_choices_answer_with_a_choice(no_orphans) -> None:
    labels = ["location", "human being", "numeric value"]
    root = ScriptedModel(
        [
            f"```python\ngot = llm_batch(context.splitlines(), choices={labels})\nprint(got)\n```",
            '```python\nanswer["content"] = repr(got)\nanswer["ready"] = True\n```',
        ]
    )
    lines = "Where is the Eiffel Tower ?\nWho wrote Hamlet ?\nHow many legs has a spider ?"
    with ctxfold.RLM(model=root, sub_model="local") as rlm:
        result = rlm.run("Label each line.", context=lines)
    got = ast.literal_eval(result.answer)
    # The grammar makes every reply a choice: no parse failure, no second ask.
    assert len(got) == 3 and all(label in labels for label in got), got
    assert result.usage.sub_calls == 3
