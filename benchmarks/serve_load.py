"""`ctxfold serve` under load: N requests at once against a fake model with a fixed latency.

Each request is a whole RLM run of three model calls in a row (a root turn that makes one
sub-call, the sub-call, a root turn that answers), so its latency-bound ideal is 3 x the model's
latency, and N runs at once (``--max-concurrent N``) ideally take that long in all. Measured
side by side in one run:

- overhead per request: one request at a time, its time minus 3 x latency;
- throughput: N at once (``--rounds`` bursts), as a ratio to the ideal N / (3 x latency);
- the server's memory (RSS of the server process) after each burst, and sandbox workers left
  once the bursts are done (at most the one spare kept warm for the next run).

    python benchmarks/serve_load.py --requests 64 --latency 0.5 --rounds 3

With ``--freeze-compare K`` it instead starts the server K times in each of three forms, in
turn: as shipped; without loading the model's SDK before the start-up ``gc.freeze()`` (it then
loads on the first request); and with that freeze made a no-op. It prints each request's
latency within the bursts (median, 95th percentile, max) and the full garbage collections the
server made during them, which hold the GIL while every request waits:

    python benchmarks/serve_load.py --requests 64 --latency 0.5 --rounds 3 --freeze-compare 3
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from ctxfold.testing.fake_openai import FakeOpenAIServer


def _reply(messages: list[dict[str, Any]]) -> str:
    last = messages[-1]["content"]
    if last.startswith("sub "):
        return "ok"
    if "Output:" in last:
        return '```python\nanswer["content"] = "n=" + str(n)\nanswer["ready"] = True\n```'
    return "```python\nn = len(context)\nprint(llm_query('sub one'))\n```"


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _workers(pid: int) -> int:
    """Sandbox worker interpreters below ``pid`` (not counting bubblewrap around them)."""
    found = 0
    for status in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = status.read_bytes().split(b"\0")
            if b"_worker.py" not in b" ".join(argv) or argv[0].endswith(b"bwrap"):
                continue  # bubblewrap's own processes wrap each worker
            ppid = _ancestors(int(status.parent.name))
        except OSError:
            continue
        found += pid in ppid
    return found


def _ancestors(pid: int) -> set[int]:
    out = set()
    while pid > 1:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        pid = int(fields[1])
        out.add(pid)
    return out


# Runs the server with a timer of its full collections (one line per collection in argv[1]);
# argv[2] "unfrozen" makes the start-up gc.freeze() a no-op, "unprepared" the loading of the
# model's SDK before it (OpenAIModel.prepare); the rest is ctxfold's command line.
_SERVER = """
import gc, sys, time
from ctxfold.cli import main
log, began = open(sys.argv[1], "a", buffering=1), [0.0]
def note(phase, info):
    if info["generation"] == 2:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            log.write(f"{1000 * (time.perf_counter() - began[0]):.3f}\\n")
gc.callbacks.append(note)
if sys.argv[2] == "unfrozen":
    gc.freeze = lambda: None
if sys.argv[2] == "unprepared":
    import ctxfold.models
    ctxfold.models.OpenAIModel.prepare = lambda self: None
sys.exit(main(sys.argv[3:]))
"""


async def _burst(url: str, n: int, latencies: list[float] | None = None) -> tuple[float, int]:
    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)

    async def one(i: int) -> str | None:
        began = time.perf_counter()
        reply = await client.chat.completions.create(
            model="ctxfold",
            messages=[
                {"role": "system", "content": "x" * (i + 1)},
                {"role": "user", "content": "n?"},
            ],
        )
        if latencies is not None:
            latencies.append(time.perf_counter() - began)
        return reply.choices[0].message.content

    started = time.perf_counter()
    replies = await asyncio.gather(*(one(i) for i in range(n)))
    seconds = time.perf_counter() - started
    right = sum(text == f"n={i + 1}" for i, text in enumerate(replies))
    await client.close()
    return seconds, right


def _start(command: list[str]) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert server.stderr is not None
    url = re.search(r"(http://\S+)", server.stderr.readline()).group(1)  # type: ignore[union-attr]
    return server, url


def _stop(server: subprocess.Popen[str]) -> None:
    server.terminate()
    server.wait(60)


VARIANTS = ("shipped", "unprepared", "unfrozen")


def _freeze_compare(args: argparse.Namespace, base_url: str) -> None:
    """The server in each of :data:`VARIANTS`, in turn, ``args.freeze_compare`` times each:
    request latencies within bursts, and the full collections during them."""
    n, ideal = args.requests, 3 * args.latency
    latencies: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    pauses: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    walls: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory() as scratch:
        for k in range(args.freeze_compare):
            for variant in VARIANTS:
                log = Path(scratch) / f"{variant}-{k}.log"
                log.touch()
                command = [
                    sys.executable, "-c", _SERVER, str(log), variant, "serve",
                    "--model", f"openai:fake@{base_url}", "--port", "0", "--max-concurrent", str(n),
                ]  # fmt: skip
                server, url = _start(command)
                try:
                    asyncio.run(_burst(url, 1))  # one run first, as a served server has had
                    before = len(log.read_text().splitlines())
                    for _ in range(args.rounds):
                        seconds, right = asyncio.run(_burst(url, n, latencies[variant]))
                        assert right == n, f"{variant}: {right}/{n} right"
                        walls[variant].append(seconds)
                    pauses[variant] += [float(x) for x in log.read_text().split()[before:]]
                finally:
                    _stop(server)
    print(f"{n} requests at once, model latency {args.latency} s, ideal {ideal:.2f} s per run;")
    print(f"{args.freeze_compare} servers of each, {args.rounds} bursts each, in turn\n")
    print("| server | requests | latency median / p95 / max s | burst wall median s "
          "| full GCs during bursts | their total / longest ms |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for variant, times in latencies.items():
        ordered = sorted(times)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        gcs = pauses[variant]
        print(
            f"| {variant} | {len(times)} | {statistics.median(times):.3f} / {p95:.3f} / "
            f"{ordered[-1]:.3f} | {statistics.median(walls[variant]):.2f} | {len(gcs)} | "
            f"{sum(gcs):.1f} / {max(gcs, default=0.0):.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per model call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--singles", type=int, default=5)
    parser.add_argument(
        "--freeze-compare", type=int, default=0, metavar="K",
        help="compare K servers as shipped, without the SDK loaded before the freeze, unfrozen",
    )  # fmt: skip
    args = parser.parse_args()
    n, latency = args.requests, args.latency
    ideal = 3 * latency
    with FakeOpenAIServer(_reply, latency=latency) as fake:
        if args.freeze_compare:
            _freeze_compare(args, fake.base_url)
            return
        command = [
            sys.executable, "-m", "ctxfold", "serve", "--model", f"openai:fake@{fake.base_url}",
            "--port", "0", "--max-concurrent", str(n),
        ]  # fmt: skip
        server, url = _start(command)
        try:
            singles = [asyncio.run(_burst(url, 1))[0] for _ in range(args.singles)]
            rss_start = _rss_mib(server.pid)
            bursts = []
            for _ in range(args.rounds):
                seconds, right = asyncio.run(_burst(url, n))
                bursts.append((seconds, right, _rss_mib(server.pid)))
            time.sleep(1.0)
            left = _workers(server.pid)
        finally:
            _stop(server)
        overhead = statistics.median(singles) - ideal
        print(f"{n} requests at once, model latency {latency} s, ideal {ideal:.2f} s per run\n")
        print(
            f"one at a time: median {statistics.median(singles):.3f} s per request, "
            f"overhead {overhead * 1000:.0f} ms ({args.singles} requests)"
        )
        print(f"server RSS before the bursts: {rss_start:.0f} MiB\n")
        print("| burst | wall s | right | throughput req/s | ideal req/s | ratio | RSS MiB |")
        print("|---|---|---|---|---|---|---|")
        for i, (seconds, right, rss) in enumerate(bursts, 1):
            print(
                f"| {i} | {seconds:.2f} | {right}/{n} | {n / seconds:.1f} | {n / ideal:.1f} "
                f"| {ideal / seconds:.2f} | {rss:.0f} |"
            )
        print(
            f"\nsandbox workers left after the bursts: {left}; server exit code {server.returncode}"
        )


if __name__ == "__main__":
    main()
