"""``ctxfold cache stats|clear [--path FILE]``: the response cache on disk."""

from __future__ import annotations

import argparse
from typing import Any


def register(verbs: Any) -> None:
    cache = verbs.add_parser("cache", help="the response cache: what it holds, or empty it")
    cache.add_argument("action", choices=("stats", "clear"))
    cache.add_argument(
        "--path", default=None, metavar="FILE", help="the cache file (default: the default one)"
    )
    cache.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ctxfold.cache import ResponseCache

    cache = ResponseCache(args.path)
    if args.action == "clear":
        print(f"removed {cache.clear():,} replies from {cache.path}")
        return 0
    stats = cache.stats()
    print(f"{stats.path}: {stats.entries:,} replies, {stats.bytes / 1e6:.1f} MB")
    for model, count in sorted(stats.models.items(), key=lambda item: -item[1]):
        print(f"  {model}: {count:,}")
    return 0
