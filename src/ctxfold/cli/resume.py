"""``ctxfold resume TRACE``: continue a run whose host died, from its trace."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ctxfold.cli._common import print_result


def register(verbs: Any) -> None:
    resume = verbs.add_parser("resume", help="continue a run whose host died, from its trace")
    resume.add_argument("trace", metavar="TRACE")
    resume.add_argument("--model", "-m", default=None, help="root model spec (default: recorded)")
    resume.add_argument("--sub-model", default=None)
    resume.add_argument("--json", action="store_true")
    resume.add_argument("--quiet", "-q", action="store_true")
    resume.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ctxfold.errors import UntrustedSpecError
    from ctxfold.rlm import RLM

    try:
        result = RLM.resume(args.trace, model=args.model, sub_model=args.sub_model)
    except UntrustedSpecError as exc:
        if not _confirm(f"ctxfold: {exc}.\nUse the trace's models anyway? [y/N] "):
            raise
        result = RLM.resume(
            args.trace, model=args.model, sub_model=args.sub_model, trust_trace=True
        )
    print_result(result, as_json=args.json, quiet=args.quiet)
    return 0 if result.answer else 1


def _confirm(question: str) -> bool:
    """Ask on the terminal; ``False`` without one (a script must pass --model instead)."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    print(question, end="", file=sys.stderr, flush=True)
    try:
        return sys.stdin.readline().strip().lower() in ("y", "yes")
    except (OSError, KeyboardInterrupt):
        return False
