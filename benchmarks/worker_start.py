"""Where a cold sandbox start goes: the floor under ``ctxfold bench perf``'s cold row.

A process's first run finds no spare worker, so it pays one worker start. This script times,
round-robin so that load hits every measure alike, the steps a start is made of:

- ``bwrap``: bubblewrap with this machine's namespaces running ``true`` (no interpreter);
- ``python -I -S``: a bare interpreter, no ``site``;
- ``python -I``: with ``site`` (the worker needs the interpreter's site-packages: model code
  may import numpy);
- ``python -I + imports``: the same plus the modules the worker imports at start-up;
- ``bwrap + python -I``: the interpreter inside bubblewrap (a plain ``/`` view);
- ``sandbox start + 1 cell``: ``ProcessSandbox`` started with one small input, one cell run,
  closed, as a run's first cell pays it without a spare.

Run: ``.venv/bin/python benchmarks/worker_start.py [--n 20]``. Prints min / median / max ms.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ctxfold.sandbox import ContextSpec, ProcessSandbox
from ctxfold.sandbox._isolation import BWRAP, plan_for

_WORKER_IMPORTS = "import ast, contextlib, json, linecache, mmap, resource, struct, traceback"


def _run(argv: list[str]) -> Callable[[], None]:
    return lambda: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def _sandbox(doc: Path) -> Callable[[], None]:
    spec = ContextSpec(name="context", kind="text_file", path=str(doc), files=[])

    def start_and_run() -> None:
        box = ProcessSandbox()
        try:
            box.start([spec], lambda request: ["" for _ in request.items])
            result = box.execute("print(len(context))")
            if result.error:
                raise RuntimeError(result.error)
        finally:
            box.close()

    return start_and_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="rounds (default 20)")
    n = parser.parse_args().n
    py = sys.executable
    plan = plan_for(None)
    wrap = [*plan.prefix, "--ro-bind", "/", "/"] if plan.level == BWRAP else []
    with tempfile.TemporaryDirectory() as folder:
        doc = Path(folder, "doc.txt")
        doc.write_text("x" * 1000)
        steps: dict[str, Callable[[], None]] = {}
        if wrap:
            steps["bwrap (true)"] = _run([*wrap, "true"])
        steps["python -I -S"] = _run([py, "-I", "-S", "-c", "pass"])
        steps["python -I"] = _run([py, "-I", "-c", "pass"])
        steps["python -I + worker imports"] = _run([py, "-I", "-c", _WORKER_IMPORTS])
        if wrap:
            steps["bwrap + python -I"] = _run([*wrap, py, "-I", "-c", "pass"])
        steps["sandbox start + 1 cell"] = _sandbox(doc)
        for step in steps.values():  # warm-up: page cache, pyc files
            step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(n):
            for name, step in steps.items():
                began = time.perf_counter()
                step()
                times[name].append(1000 * (time.perf_counter() - began))
    print(f"isolation: {plan.level}; {n} rounds, round-robin; ms min / median / max")
    for name, values in times.items():
        low, mid, high = min(values), statistics.median(values), max(values)
        print(f"  {name:30s} {low:6.1f} / {mid:6.1f} / {high:6.1f}")


if __name__ == "__main__":
    main()
