"""Compaction: a long root conversation is replaced by the root model's notes of it."""

from __future__ import annotations

from typing import Any

import ctxfold
from ctxfold.models import ScriptedModel
from ctxfold.trace import Compaction, RootResponse

TURNS = 30
NOTES = "Notes: printed chunks 0..N; `seen` counts them."


def _long_run(compact_at: float | None) -> tuple[ctxfold.Result, ScriptedModel]:
    """Thirty turns that each print 1,500 characters, then an answer that reads `history`."""
    turns = 0

    def reply(messages: list[dict[str, Any]]) -> str:
        nonlocal turns
        if "will be replaced by your notes" in messages[-1]["content"]:
            return NOTES
        turns += 1
        if turns <= TURNS:
            return (
                f"```python\nseen = globals().get('seen', 0) + 1\nprint('{turns % 10}' * 1500)\n```"
            )
        return (
            "```python\nkept = len(globals().get('history', []))\nprint(seen, kept)\n"
            "answer['content'] = f'{seen} {kept}'\nanswer['ready'] = True\n```"
        )

    model = ScriptedModel(reply, context_window=16_000)  # compaction past 0.5 * 48,000 characters
    with ctxfold.RLM(model, compact_at=compact_at, budget=ctxfold.Budget(iterations=40)) as rlm:
        return rlm.run("q", "some input"), model


def test_a_long_conversation_is_compacted_and_history_stays_whole() -> None:
    result, model = _long_run(0.5)
    compactions = result.trace.of_type(Compaction)
    assert compactions, "the conversation never passed the threshold"
    first = compactions[0]
    assert first.after_chars < first.before_chars and first.summary == NOTES
    # The next root call sees the notes, not the old turns' outputs.
    after = next(call for call in model.calls if any(NOTES in m["content"] for m in call[1:]))
    assert not any("1" * 1500 in m["content"] for m in after)
    # Nothing is lost: the variables live on, and `history` in the REPL holds every message up
    # to the last compaction (first messages, and a reply and an output per turn).
    assert result.ready
    seen, kept = (int(x) for x in result.answer.split())
    assert seen == TURNS
    last = compactions[-1].turn
    assert kept >= 2 + 2 * (last - 1)
    assert len(compactions) >= 2


def test_compaction_saves_root_input_tokens() -> None:
    compacted, _ = _long_run(0.5)
    plain, _ = _long_run(None)
    assert plain.trace.of_type(Compaction) == []
    spent = [r.usage.root_input_tokens for r in (compacted, plain)]
    assert spent[0] < spent[1], spent
    assert compacted.answer.split()[0] == plain.answer.split()[0] == str(TURNS)
    assert len(compacted.trace.of_type(RootResponse)) == len(plain.trace.of_type(RootResponse))
