"""Counting questions that code can answer, on data made here (issue 14's demonstration check).

Two kinds, past the local model's window:

- ``log``: a generated application log (levels, services, messages) of about ``--chars``
  characters; "How many ERROR lines come from the <service> service?";
- ``source``: CPython standard-library modules joined with ``# ===== file: <path> =====``
  headers; "How many top-level functions does the file <path> define?" (counted with ``ast``).

For each seed it prints the demonstration the small profile picked, the answer, the truth, the
root turns, sub-calls and seconds. The point is that fields, tags and patterns are counted in
code in seconds, not by labelling every line with a sub-model.

    python benchmarks/count_probe.py --kinds log,source --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import ast
import random
import re
import sysconfig
import time
from pathlib import Path

import ctxfold
from ctxfold.prompts import pick_demonstration

_SERVICES = ("auth", "billing", "search", "payments", "catalog", "mailer", "gateway")
_LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")
_MESSAGES = (
    "request served in {n} ms",
    "cache miss for key item:{n}",
    "retrying upstream call ({n} of 3)",
    "user {n} signed in",
    "queue depth is {n}",
    "payload of {n} bytes rejected",
)


def make_log(seed: int, chars: int) -> tuple[str, str, int]:
    """A log, a question about it, and the true count."""
    rng = random.Random(seed)
    lines, size, second = [], 0, 0
    while size < chars:
        second += rng.randint(1, 9)
        level, service = rng.choice(_LEVELS), rng.choice(_SERVICES)
        message = rng.choice(_MESSAGES).format(n=rng.randint(1, 9999))
        day, clock = 1 + second // 86400, second % 86400
        stamp = f"2024-06-{day:02d} {clock // 3600:02d}:{clock // 60 % 60:02d}:{clock % 60:02d}"
        line = f"{stamp} {level:<5} [{service}] {message}"
        lines.append(line)
        size += len(line) + 1
    service = rng.choice(_SERVICES)
    truth = sum(1 for line in lines if " ERROR " in line and f"[{service}]" in line)
    return "\n".join(lines), f"How many ERROR lines come from the {service} service?", truth


def make_source(seed: int, chars: int) -> tuple[str, str, int]:
    """Standard-library files joined with headers, a question, and the true count."""
    rng = random.Random(seed)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if 8_000 < p.stat().st_size < 60_000)
    rng.shuffle(files)
    parts, size, chosen = [], 0, []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(f"# ===== file: {path.name} =====\n{text}")
        chosen.append((path.name, text))
        size += len(parts[-1])
        if size >= chars:
            break
    name, text = rng.choice(chosen)
    body = ast.parse(text).body
    truth = sum(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) for node in body)
    return "\n".join(parts), f"How many top-level functions does the file {name} define?", truth


def _number(text: str) -> int | None:
    found = re.findall(r"-?\d+", text.replace(",", ""))
    return int(found[0]) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="local")
    parser.add_argument("--kinds", default="log,source")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--chars", type=int, default=256_000)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=900)
    args = parser.parse_args()
    makers = {"log": make_log, "source": make_source}
    print("| kind | seed | demonstration | answer | truth | right | turns | sub-calls | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    with ctxfold.RLM(
        args.model, budget=ctxfold.Budget(iterations=args.iterations, seconds=args.seconds)
    ) as rlm:
        for kind in args.kinds.split(","):
            for seed in map(int, args.seeds.split(",")):
                context, question, truth = makers[kind](seed, args.chars)
                started = time.monotonic()
                result = rlm.run(question, context)
                got = _number(result.answer)
                print(
                    f"| {kind} | {seed} | {pick_demonstration(question).name} | "
                    f"{result.answer[:40]!r} | {truth} | {'yes' if got == truth else 'no'} | "
                    f"{result.iterations} | {result.usage.sub_calls} | "
                    f"{time.monotonic() - started:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
