"""Batch wall time after a start-up left as it is, collected (``gc.collect()``) or frozen
(``gc.collect()`` then ``gc.freeze()``), side by side.

    .venv/bin/python benchmarks/gc_freeze.py --runs 3 --repeats 8
    .venv/bin/python benchmarks/gc_freeze.py --pauses     # what one full collection costs

Each run is a fresh process per variant that makes one small RLM run (imports, first
connections and the price table loaded, as in a program that has started up), does what its
variant says, then measures :func:`ctxfold.bench.perf.run_perf` (ctxfold, and rlms when
installed). Processes alternate between the variants, so all see the same machine. Printed per
process: the full garbage collections during the whole measurement, and for each library each
repeat's batch / ideal, the full collections during the batches and the per-turn overhead.
The collections during the measurement include the one ``run_perf`` makes at the end of its
warm-up (since stop 25); the tables of stop 25 in ``perf-distributions.md`` were taken before.

``--pauses``: in one process set up as ``ctxfold serve`` is (the ``serve`` extra imported, an
app made for an RLM that has answered once), five timed full collections, then
``gc.freeze()``, then five more; the tracked objects each time.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time


def _started_up() -> None:
    """What a program has done before its real work: one RLM run against a local endpoint."""
    import ctxfold
    from ctxfold.testing.fake_openai import FakeOpenAIServer

    def reply(messages: list[dict[str, str]]) -> str:
        return (
            "```python\nprint(len(context))\nanswer['content'] = 'ok'\nanswer['ready'] = True\n```"
        )

    with FakeOpenAIServer(reply) as server:
        spec = f"openai:gpt-4o-mini@{server.base_url}"  # a priced name: the table is loaded
        with ctxfold.RLM(model=spec) as rlm:
            rlm.run("q", context="some input")


VARIANTS = ("as-is", "collected", "frozen")


def _child(variant: str, repeats: int) -> None:
    from ctxfold.bench.perf import full_collections, run_perf

    _started_up()
    if variant != "as-is":
        gc.collect()
    if variant == "frozen":
        gc.freeze()
    with full_collections() as full:
        report = run_perf(repeats=repeats)
    out: dict[str, object] = {"permanent": gc.get_freeze_count(), "full_ms": full}
    for perf in (report.ctxfold, report.rlms):
        if perf is not None:
            out[perf.library] = {
                name: perf.samples[name]
                for name in ("batch_ratio", "batch_gc_ms", "overhead_ms", "max_in_flight")
            }
    print(json.dumps(out))


def _pauses() -> None:
    import uvicorn  # noqa: F401 - what serve has imported

    import ctxfold
    from ctxfold.serve import create_app

    _started_up()
    with ctxfold.RLM(model="openai:gpt-4o-mini@http://127.0.0.1:9/v1") as rlm:
        create_app({"rlm": rlm})
        for label in ("as started", "after gc.freeze()"):
            if label != "as started":
                gc.freeze()
            times = []
            for _ in range(5):
                began = time.perf_counter()
                gc.collect()
                times.append(1000 * (time.perf_counter() - began))
            tracked = len(gc.get_objects())
            shown = " ".join(f"{ms:.1f}" for ms in times)
            print(f"{label}: {tracked} objects tracked; full collection (ms): {shown}")


def _row(label: str, values: list[float], fmt: str) -> str:
    return f"  {label}: " + " ".join(format(v, fmt) for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="processes per variant")
    parser.add_argument("--repeats", type=int, default=8, help="run_perf repeats per process")
    parser.add_argument("--pauses", action="store_true", help="time full collections only")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pauses:
        _pauses()
        return
    if args.child:
        _child(args.child, args.repeats)
        return
    ratios: dict[str, list[float]] = {v: [] for v in VARIANTS}
    pauses: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for run in range(args.runs):
        for variant in VARIANTS if run % 2 == 0 else VARIANTS[::-1]:
            command = [sys.executable, __file__, "--child", variant, "--repeats", str(args.repeats)]
            line = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            out = json.loads(line.strip().splitlines()[-1])
            full = " ".join(f"{ms:.0f}" for ms in out["full_ms"]) or "none"
            print(f"run {run + 1}, {variant} (frozen objects: {out['permanent']}; ", end="")
            print(f"full collections during the measurement, ms: {full})")
            for library in ("ctxfold", "rlms"):
                if library in out:
                    s = out[library]
                    print(f" {library}")
                    print(_row("batch / ideal", s["batch_ratio"], ".3f"))
                    print(_row("full collections (ms)", s["batch_gc_ms"], ".0f"))
                    print(_row("overhead per turn (ms)", s["overhead_ms"], ".2f"))
            ratios[variant] += out["ctxfold"]["batch_ratio"]
            pauses[variant] += out["ctxfold"]["batch_gc_ms"]
    print("\nctxfold, all repeats:")
    for variant in VARIANTS:
        r, p = ratios[variant], pauses[variant]
        over = sum(x > 1.05 for x in r)
        print(
            f"  {variant}: batch / ideal min {min(r):.3f} median {statistics.median(r):.3f} "
            f"max {max(r):.3f}; {over} of {len(r)} over 1.05; batches with a full collection "
            f"{sum(x > 0 for x in p)}, longest {max(p):.0f} ms"
        )


if __name__ == "__main__":
    main()
