"""Scaffold performance, ctxfold against rlms: per-turn overhead and batch wall time.

    .venv/bin/python benchmarks/perf.py                 # the full run (about a minute)
    .venv/bin/python benchmarks/perf.py --out benchmarks/results/perf.md

Prints a Markdown report: the settings, the machine, a ctxfold-vs-rlms table with ratios and the
target checks. rlms comes from the ``perf`` extra (``pip install -e '.[perf]'``); without it
ctxfold is measured alone. The measurement itself is :func:`ctxfold.bench.perf.run_perf`.
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
from pathlib import Path

from ctxfold.bench.perf import PerfReport, SandboxFactory, run_perf


def _document(report: PerfReport, command: str) -> str:
    machine = report.machine
    return "\n".join(
        [
            "# Scaffold performance: ctxfold vs rlms",
            "",
            f"- command: `{command}`",
            f"- date: {report.date}",
            f"- machine: {machine['nproc']} cores, Python {machine['python']}, "
            f"{machine['platform']}",
            f"- ctxfold's sandbox: {machine.get('sandbox', '?')}",
            f"- load average (1 min): {machine.get('load', '?')}",
            f"- versions: ctxfold {machine['ctxfold']}, rlms {machine['rlms']}, "
            f"openai {machine.get('openai', '?')}, httpx2 {machine.get('httpx2', '?')}",
            "",
            report.to_markdown(),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=20, help="root turns per overhead run")
    parser.add_argument("--batch", type=int, default=64, help="sub-calls in the batch cell")
    parser.add_argument("--latency", type=float, default=0.2, help="server latency for the batch")
    parser.add_argument("--concurrency", type=int, default=16, help="ctxfold's sub-call threads")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--no-rlms", action="store_true", help="measure ctxfold alone")
    parser.add_argument(
        "--in-process-server", action="store_true", help="serve from a thread, not a process"
    )
    parser.add_argument(
        "--no-isolation",
        action="store_true",
        help="ctxfold's worker without OS isolation (ProcessSandbox(isolate=False))",
    )
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument("--json", type=Path, help="write the raw figures as JSON to this file")
    args = parser.parse_args(argv)
    sandbox: SandboxFactory = "process"
    if args.no_isolation:
        from ctxfold.sandbox import ProcessSandbox

        sandbox = functools.partial(ProcessSandbox, isolate=False)
    report = run_perf(
        turns=args.turns,
        batch=args.batch,
        latency=args.latency,
        concurrency=args.concurrency,
        repeats=args.repeats,
        include_rlms=not args.no_rlms,
        isolated_server=not args.in_process_server,
        sandbox=sandbox,
        progress=lambda line: print(f"... {line}", file=sys.stderr, flush=True),
    )
    command = shlex.join([".venv/bin/python", "benchmarks/perf.py", *sys.argv[1:]])
    text = _document(report, command)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
