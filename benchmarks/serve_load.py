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
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
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


async def _burst(url: str, n: int) -> tuple[float, int]:
    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    started = time.perf_counter()
    replies = await asyncio.gather(
        *(
            client.chat.completions.create(
                model="ctxfold",
                messages=[
                    {"role": "system", "content": "x" * (i + 1)},
                    {"role": "user", "content": "n?"},
                ],
            )
            for i in range(n)
        )
    )
    seconds = time.perf_counter() - started
    right = sum(r.choices[0].message.content == f"n={i + 1}" for i, r in enumerate(replies))
    await client.close()
    return seconds, right


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per model call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--singles", type=int, default=5)
    args = parser.parse_args()
    n, latency = args.requests, args.latency
    ideal = 3 * latency
    with FakeOpenAIServer(_reply, latency=latency) as fake:
        command = [
            sys.executable, "-m", "ctxfold", "serve", "--model", f"openai:fake@{fake.base_url}",
            "--port", "0", "--max-concurrent", str(n),
        ]  # fmt: skip
        server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        assert server.stderr is not None
        url = re.search(r"(http://\S+)", server.stderr.readline()).group(1)  # type: ignore[union-attr]
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
            server.terminate()
            server.wait(60)
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
