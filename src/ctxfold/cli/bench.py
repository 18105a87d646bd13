"""``ctxfold bench TASK ...``: argument handling and progress around :mod:`ctxfold.bench`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ctxfold.cli._common import add_cache_option
from ctxfold.errors import CtxfoldError


def register(verbs: Any) -> None:
    bench = verbs.add_parser(
        "bench",
        help="run a long-context task with several methods side by side",
        description="TASK is a task name (see --list), 'perf' (scaffold speed against rlms), "
        "or 'report' (rebuild the report of --out).",
    )
    bench.add_argument("task", nargs="?", help="task name, 'perf' or 'report'")
    bench.add_argument("--list", action="store_true", help="list the tasks and the methods")
    bench.add_argument("--methods", default="base,rlm", help="comma-separated (default: base,rlm)")
    bench.add_argument(
        "--n", type=int, default=3, help="instances per length; for perf, repeats (default 3)"
    )
    bench.add_argument("--lengths", default=None, help="comma-separated input lengths in tokens")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--model", "-m", default="local")
    bench.add_argument("--sub-model", default=None)
    bench.add_argument("--max-iterations", type=int, default=12, metavar="N")
    bench.add_argument("--out", default="runs/bench", help="results folder (default runs/bench)")
    bench.add_argument("--executor", choices=("local", "ray"), default="local")
    bench.add_argument("--ray-address", default=None, help="an existing Ray cluster")
    bench.add_argument(
        "--ray-cpus",
        type=int,
        default=None,
        metavar="N",
        help="tasks the local Ray runs at once (default: the cores, at most 4)",
    )
    add_cache_option(bench)
    bench.add_argument("--quiet", "-q", action="store_true")
    bench.set_defaults(run=bench_command)


def _listing() -> str:
    """One line per task and per method, with what it is."""
    from ctxfold.bench import METHODS
    from ctxfold.bench.tasks import TASKS

    def first_line(doc: str | None) -> str:
        return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""

    lines = [f"task    {name:<14} {first_line(type(t).__doc__)}" for name, t in TASKS.items()]
    lines += [f"method  {name:<14} {first_line(m.__doc__)}" for name, m in METHODS.items()]
    lines += [
        "task    perf           scaffold overhead and batch wall time against rlms",
        "task    report         rebuild report.md and the plots of --out",
    ]
    return "\n".join(lines)


def parse_lengths(text: str | None) -> tuple[int, ...]:
    """``--lengths`` (``8000,32k,1m``) as token counts; empty for none."""
    if not text:
        return ()
    try:
        return tuple(
            int(float(x.strip().lower().replace("k", "e3").replace("m", "e6")))
            for x in text.split(",")
        )
    except ValueError:
        raise CtxfoldError(f"--lengths takes numbers like 8000,32k,1m; got {text!r}") from None


def _check_ray_cpus(args: argparse.Namespace) -> None:
    """``--ray-cpus`` sizes the local Ray that ``--executor ray`` starts, and nothing else."""
    if args.ray_cpus is None:
        return
    if args.executor != "ray":
        raise CtxfoldError("--ray-cpus goes with --executor ray")
    if args.ray_address:
        raise CtxfoldError(
            "--ray-cpus sizes the local Ray this command starts; "
            "a cluster given by --ray-address uses its own CPUs"
        )
    if args.ray_cpus < 1:
        raise CtxfoldError(f"--ray-cpus must be 1 or more; got {args.ray_cpus}")


def bench_command(args: argparse.Namespace) -> int:
    """Run ``ctxfold bench`` and write results.jsonl, report.md and plots under ``--out``."""
    if args.list:
        print(_listing())
        return 0
    if args.task is None:
        raise CtxfoldError("name a task (ctxfold bench --list shows them), 'perf' or 'report'")
    _check_ray_cpus(args)
    out = Path(args.out)
    if args.task == "perf":
        from ctxfold.bench.perf import run_perf

        if args.n < 1:
            raise CtxfoldError("--n (the repeats of perf) must be at least 1")
        report = run_perf(repeats=args.n)
        print(report.to_markdown())
        return 0
    if args.task == "report":
        return _write_report(out)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    return run_with_progress(bench_spec(args, methods, cache=args.cache), out, args)


def bench_spec(args: argparse.Namespace, methods: tuple[str, ...], **extra: Any) -> Any:
    """A :class:`ctxfold.bench.BenchSpec` from the options ``bench`` and ``train rollouts``
    share (task, lengths, n, seed, models, max iterations), with ``extra`` fields."""
    from ctxfold.bench import BenchSpec

    return BenchSpec(
        task=args.task,
        methods=methods,
        lengths=parse_lengths(args.lengths),
        n=args.n,
        seed=args.seed,
        model=args.model,
        sub_model=args.sub_model,
        max_iterations=args.max_iterations,
        **extra,
    )


def run_with_progress(spec: Any, out: Path, args: argparse.Namespace) -> int:
    """Run ``spec`` (a :class:`ctxfold.bench.BenchSpec`) into ``out`` with a progress bar
    (``args``: ``quiet`` and the executor options), then write its report."""
    from ctxfold.bench import run_bench

    _check_ray_cpus(args)
    console = Console(stderr=True)
    show = console.is_terminal and not args.quiet
    with Progress(
        TextColumn(f"[cyan]bench {spec.task}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        disable=not show,
    ) as progress:
        bar = progress.add_task("", total=None)

        def started(total: int) -> None:
            progress.update(bar, total=total)

        def row_done(row: dict[str, object]) -> None:
            progress.update(bar, advance=1, description=f"{row['method']} score={row['score']}")

        run_bench(
            spec,
            out / "results.jsonl",
            on_row=row_done,
            on_start=started,
            executor=args.executor,
            ray_address=args.ray_address,
            ray_cpus=args.ray_cpus,
        )
    return _write_report(out)


def _write_report(out: Path) -> int:
    from ctxfold.bench import load_rows, markdown, plots

    results = out / "results.jsonl"
    if not results.exists():
        raise CtxfoldError(f"no results at {results}")
    rows = load_rows(results)
    table = markdown(rows)
    (out / "report.md").write_text(table + "\n", encoding="utf-8")
    images = plots(rows, out)
    print(table)
    print(
        f"\nwrote {out / 'report.md'}" + (f" and {len(images)} plot(s)" if images else ""),
        file=sys.stderr,
    )
    return 0
