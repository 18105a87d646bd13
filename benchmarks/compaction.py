"""What compaction saves: root input tokens of one long scripted conversation, with and without.

A scripted root model runs ``--turns`` turns that each print ``--output`` characters, then
answers; the same run goes once with ``compact_at=0.5`` and once with ``compact_at=None`` (old
outputs are then only elided), side by side, for each root window in ``--windows``. The
compaction calls themselves are counted in the compacted run's tokens.

    python benchmarks/compaction.py --windows 8000,16000,32000 --outputs 1500,4000
"""

from __future__ import annotations

import argparse
from typing import Any

import ctxfold
from ctxfold.models import ScriptedModel
from ctxfold.trace import Compaction

_NOTES = "Notes: each turn printed one chunk; `seen` counts the turns."


def _run(compact_at: float | None, window: int, turns: int, output: int) -> ctxfold.Result:
    done = 0

    def reply(messages: list[dict[str, Any]]) -> str:
        nonlocal done
        if "will be replaced by your notes" in messages[-1]["content"]:
            return _NOTES
        done += 1
        if done <= turns:
            return (
                "```python\nseen = globals().get('seen', 0) + 1\n"
                f"print('{done % 10}' * {output})\n```"
            )
        return "```python\nprint(seen)\nanswer['content'] = str(seen)\nanswer['ready'] = True\n```"

    model = ScriptedModel(reply, context_window=window)
    budget = ctxfold.Budget(iterations=turns + 5)
    with ctxfold.RLM(model, compact_at=compact_at, budget=budget) as rlm:
        return rlm.run("How many turns ran?", "some input")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", default="8000,16000,32000")
    parser.add_argument("--outputs", default="1500,4000")
    parser.add_argument("--turns", type=int, default=30)
    args = parser.parse_args()
    print(
        "| root window (tokens) | output per turn | compactions | root input tokens, "
        "compacted | without | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for window in (int(w) for w in args.windows.split(",")):
        for output in (int(o) for o in args.outputs.split(",")):
            with_it = _run(0.5, window, args.turns, output)
            without = _run(None, window, args.turns, output)
            assert with_it.answer == without.answer == str(args.turns)
            a, b = with_it.usage.root_input_tokens, without.usage.root_input_tokens
            count = len(with_it.trace.of_type(Compaction))
            print(f"| {window:,} | {output:,} | {count} | {a:,} | {b:,} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
