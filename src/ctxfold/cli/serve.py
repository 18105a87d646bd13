"""``ctxfold serve --model SPEC``: an RLM as an OpenAI-compatible chat-completions server."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from ctxfold.budget import Budget
from ctxfold.cli._common import add_model_options, serve_extra, settle_heap
from ctxfold.errors import CtxfoldError


def register(verbs: Any) -> None:
    serve = verbs.add_parser(
        "serve", help="serve an RLM as an OpenAI-compatible model (POST /v1/chat/completions)"
    )
    add_model_options(serve)
    serve.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="also serve model id NAME: an RLM whose root model is SPEC (repeatable)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' (repeatable: any of them)",
    )
    serve.add_argument("--max-concurrent", type=int, default=4, metavar="N", help="runs at once")
    serve.add_argument(
        "--max-queue", type=int, default=64, metavar="N", help="requests waiting; more get 429"
    )
    serve.add_argument("--max-body-mb", type=float, default=32.0, metavar="MB")
    serve.add_argument("--max-iterations", type=int, default=30, metavar="N")
    serve.add_argument("--max-tokens", type=int, default=None, metavar="N", help="per run")
    serve.add_argument("--max-seconds", type=float, default=None, metavar="S", help="per run")
    serve.add_argument("--trace-dir", default=None, metavar="DIR", help="write each run's trace")
    serve.add_argument(
        "--grace", type=float, default=30.0, metavar="S", help="on SIGTERM, wait this long"
    )
    serve.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    serve_extra()
    import uvicorn

    from ctxfold.rlm import RLM
    from ctxfold.serve import SERVED_ID, ServeConfig, create_app

    if args.max_concurrent < 1 or args.max_queue < 0 or not 0 <= args.port <= 65535:
        raise CtxfoldError("--max-concurrent must be >= 1, --max-queue >= 0, --port 0-65535")
    if args.max_body_mb <= 0:
        raise CtxfoldError("--max-body-mb must be more than 0")
    cap = Budget(iterations=args.max_iterations, tokens=args.max_tokens, seconds=args.max_seconds)
    aliases = _aliases(args.alias)
    trace_dir = None
    if args.trace_dir:
        trace_dir = Path(args.trace_dir)
        trace_dir.mkdir(parents=True, exist_ok=True)
    config = ServeConfig(
        api_keys=tuple(args.api_key),
        max_concurrent=args.max_concurrent,
        max_queue=args.max_queue,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        cap=cap,
        trace_dir=trace_dir,
    )
    rlms = {SERVED_ID: RLM(model=args.model, sub_model=args.sub_model, budget=cap)}
    try:
        for name, spec in aliases.items():
            rlms[name] = RLM(model=spec, sub_model=args.sub_model, budget=cap)
    except BaseException:
        for rlm in rlms.values():
            rlm.close()
        raise
    app = create_app(rlms, config)
    settle_heap(rlms.values())
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level="warning",
            timeout_graceful_shutdown=args.grace,
            limit_concurrency=None,
        )
    )
    asyncio.run(_serve(server))
    return 0


async def _serve(server: Any) -> None:
    """Run uvicorn, and say where it listens once it does (the real port when 0 was asked)."""

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.05)
        for listener in server.servers:
            for sock in listener.sockets:
                host, port = sock.getsockname()[:2]
                print(f"ctxfold serve: listening on http://{host}:{port}/v1", file=sys.stderr)
        sys.stderr.flush()

    telling = asyncio.ensure_future(announce())
    try:
        await server.serve()
    finally:
        telling.cancel()


def _aliases(items: list[str]) -> dict[str, str]:
    from ctxfold.serve import SERVED_ID

    out: dict[str, str] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise CtxfoldError(f"--alias must be NAME=MODEL_SPEC, got {item!r}")
        if name == SERVED_ID or name in out:
            raise CtxfoldError(f"--alias {name!r} is given twice (or is the reserved id)")
        out[name.strip()] = spec.strip()
    return out
