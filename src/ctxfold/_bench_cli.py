"""``ctxfold bench``: argument handling and progress around :mod:`ctxfold.bench`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ctxfold.errors import CtxfoldError


def _ints(text: str | None) -> tuple[int, ...]:
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
    _check_ray_cpus(args)
    out = Path(args.out)
    if args.task == "perf":
        from ctxfold.bench.perf import run_perf

        report = run_perf()
        print(report.to_markdown())
        return 0
    if args.task == "report":
        return _write_report(out)
    from ctxfold.bench import BenchSpec, run_bench

    spec = BenchSpec(
        task=args.task,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        lengths=_ints(args.lengths),
        n=args.n,
        seed=args.seed,
        model=args.model,
        sub_model=args.sub_model,
        max_iterations=args.max_iterations,
    )
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
