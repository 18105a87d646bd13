"""The root's part of OOLONG alone: a real root model, and a simulated sub-model that labels a line
right with probability P (else a random label). A real sub-model labels an instance's ~1,100
lines in 10-20 minutes on 2 cores; this shows in a minute or two whether the root labels every
line with ``choices``, counts in code, and turns the counts into the answer the question asks for.
Used for the development split of ``benchmarks/results/local-quality.md``.

    python benchmarks/oolong_root_probe.py 'local?window=8192' --seed 1 --n 4 --p 0.7
    python benchmarks/oolong_root_probe.py 'local:qwen2.5-coder-1.5b?window=8192' --seed 1 --n 4

Reads TREC from ``$CTXFOLD_TREC_DIR`` like the bench; prints each root reply, then a score line
per instance.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from typing import Any

import ctxfold
from ctxfold.bench.tasks import TREC_LABELS, get_task, load_trec
from ctxfold.models import Completion, Message, Model, ScriptedModel, resolve_model


class _Shown:
    """The root model, printing each reply as it comes."""

    def __init__(self, model: Model) -> None:
        self.name, self.context_window, self._model = model.name, model.context_window, model

    def complete(self, messages: Sequence[Message], **options: Any) -> Completion:
        completion = self._model.complete(messages, **options)
        print(f"--- root reply:\n{completion.text[:800]}", flush=True)
        return completion

    async def acomplete(self, messages: Sequence[Message], **options: Any) -> Completion:
        return self.complete(messages, **options)

    def close(self) -> None:
        self._model.close()


def _simulated_sub(p: float, seed: int) -> ScriptedModel:
    truth = {q.text: TREC_LABELS[q.label] for q in load_trec()}
    names = list(TREC_LABELS.values())
    rng = random.Random(seed)

    def reply(messages: list[Message]) -> str:
        # the labelled text is one line of the prompt: a whole OOLONG line or its question part
        lines = str(messages[-1]["content"]).splitlines()
        texts = [" ".join(line.rsplit("Instance: ", 1)[-1].split()) for line in lines]
        gold = next((truth[t] for t in texts if t in truth), None)
        if gold is None:  # not a labelling call of the expected form
            return "I do not know."
        return gold if rng.random() < p else rng.choice(names)

    return ScriptedModel(reply, name=f"simulated-sub-p{p}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="root model spec")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--p", type=float, default=0.7, help="labelling accuracy of the sub-model")
    parser.add_argument("--length", type=int, default=32_000)
    args = parser.parse_args()
    root = _Shown(resolve_model(args.root))
    task = get_task("oolong")
    total = 0.0
    for instance in task.generate(n=args.n, length=args.length, seed=args.seed):
        with ctxfold.RLM(
            model=root,
            sub_model=_simulated_sub(args.p, args.seed),
            budget=ctxfold.Budget(iterations=8),
            prompt_profile="small",
        ) as rlm:
            result = rlm.run(instance.question, instance.context)
        score = task.score(instance, result.answer)
        total += score
        print(
            f"=== {instance.id} {instance.meta['variant']}: gold {instance.gold!r}, answer "
            f"{result.answer[:80]!r}, score {score:.2f}, {result.iterations} turns",
            flush=True,
        )
    print(f"mean score {100 * total / args.n:.1f} % over {args.n} (p={args.p})")


if __name__ == "__main__":
    main()
