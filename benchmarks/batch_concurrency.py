"""Does an ``llm_batch`` reach its concurrency? Wall time of one batch against its ideal.

Each run is a fresh ``RLM`` whose first cell sends ``--items`` sub-calls with ``llm_batch`` to a
fake OpenAI-compatible model that answers after ``--latency`` seconds; with ``--concurrency``
calls in flight the batch ideally takes ceil(items / concurrency) x latency. Printed: the
distribution (min, median, max over ``--runs`` runs) of the cell's wall time as a ratio to that
ideal, and of the most calls the server saw in flight at once.

    python benchmarks/batch_concurrency.py --runs 20 --items 64 --concurrency 16 --latency 0.2
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

import ctxfold
from ctxfold.testing.fake_openai import FakeOpenAIServer
from ctxfold.trace import Cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    batch = f"r = llm_batch([f'sub {{i}}' for i in range({args.items})])\nprint(len(r))"

    def reply(messages: list[dict[str, Any]]) -> str:
        last = messages[-1]["content"]
        if last.startswith("sub "):
            return "ok"
        if "Output" in last:
            return "```python\nFINAL('done')\n```"
        return f"```python\n{batch}\n```"

    ideal = math.ceil(args.items / args.concurrency) * args.latency
    ratios, in_flight = [], []
    with FakeOpenAIServer(reply, latency=args.latency) as fake:
        for _ in range(args.runs):
            fake.reset_stats()
            model = f"openai:m@{fake.base_url}"
            with ctxfold.RLM(model, concurrency=args.concurrency) as rlm:
                result = rlm.run("q", "x")
            ratios.append(result.trace.of_type(Cell)[0].duration_s / ideal)
            in_flight.append(fake.max_in_flight)
    print(
        f"{args.runs} runs, {args.items} sub-calls at {args.latency} s, concurrency "
        f"{args.concurrency}: ideal {ideal:.2f} s per batch\n"
    )
    print("| measure | min | median | max |")
    print("|---|---|---|---|")
    print(
        f"| batch wall time / ideal | {min(ratios):.3f} | {statistics.median(ratios):.3f} "
        f"| {max(ratios):.3f} |"
    )
    print(
        f"| most calls in flight | {min(in_flight)} | {statistics.median(in_flight):g} "
        f"| {max(in_flight)} |"
    )
    print(f"\nruns at or under 1.05x: {sum(r <= 1.05 for r in ratios)} of {args.runs}")


if __name__ == "__main__":
    main()
