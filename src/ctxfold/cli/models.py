"""``ctxfold models``: the embedded local models and their state."""

from __future__ import annotations

import argparse
from typing import Any


def register(verbs: Any) -> None:
    models = verbs.add_parser("models", help="list the embedded local models and their state")
    models.set_defaults(run=run)


def run(_: argparse.Namespace) -> int:
    from ctxfold.models.local import list_local_models

    for info in list_local_models():
        state = "verified" if info.verified else "installed" if info.installed else "not installed"
        print(f"{info.name:<28} {state:<14} {info.path or ''}")
    return 0
