"""``ctxfold mcp --model SPEC [--root DIR]``: an RLM as an MCP tool, over stdio."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ctxfold.budget import Budget
from ctxfold.cli._common import add_model_options, serve_extra, settle_heap
from ctxfold.errors import CtxfoldError


def register(verbs: Any) -> None:
    mcp = verbs.add_parser(
        "mcp", help="serve an RLM as the MCP tool ask(question, paths) over stdio"
    )
    add_model_options(mcp)
    mcp.add_argument(
        "--root",
        default=".",
        metavar="DIR",
        help="only files and folders under DIR may be asked about (default: .)",
    )
    mcp.add_argument("--max-iterations", type=int, default=30, metavar="N")
    mcp.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    serve_extra()
    from ctxfold.rlm import RLM
    from ctxfold.serve import create_mcp_server

    root = Path(args.root)
    if not root.is_dir():
        raise CtxfoldError(f"--root {args.root!r} is not a folder")
    rlm = RLM(
        model=args.model, sub_model=args.sub_model, budget=Budget(iterations=args.max_iterations)
    )
    server = create_mcp_server(rlm, root)
    settle_heap([rlm])
    server.run("stdio")
    return 0
