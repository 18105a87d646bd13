"""Write a few-MB application log with one planted fact, for ``make demo``.

Usage: python examples/make_demo_input.py OUT_PATH [--mb 4] [--seed 7]
The log is far larger than the embedded model's 32K-token window; the fact appears once.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

SERVICES = ["auth", "billing", "search", "gateway", "mailer", "catalog", "inventory", "reports"]
LEVELS = ["INFO"] * 8 + ["DEBUG"] * 3 + ["WARN", "ERROR"]
MESSAGES = [
    "request handled in {ms} ms path=/api/v2/{word}",
    "cache miss key={word}:{num}",
    "user session refreshed user={user}",
    "queued job id={num} kind={word}",
    "connection pool size={ms} idle={num}",
    "retrying upstream call attempt={ms}",
    "config reloaded from /etc/{word}.yaml",
]
WORDS = ["alpha", "orders", "items", "prices", "profile", "stock", "tickets", "ledger", "feeds"]
USERS = ["ana", "bo", "chen", "dara", "eli", "fatima", "goran", "hana", "ivo", "jun"]
FACT = (
    "{ts} INFO  vault: rotated the master key of the payroll service; new key id is KX-4471-ORCHID"
)
QUESTION = "What is the new key id of the payroll service's master key?"
ANSWER = "KX-4471-ORCHID"


def make_log(megabytes: float, seed: int) -> str:
    rng = random.Random(seed)
    lines: list[str] = []
    size, target = 0, int(megabytes * 1_000_000)
    second = 0
    while size < target:
        second += rng.randint(0, 3)
        day, clock = 1 + second // 86400 % 28, second % 86400
        ts = f"2024-05-{day:02d} {clock // 3600:02d}:{clock // 60 % 60:02d}:{clock % 60:02d}"
        msg = rng.choice(MESSAGES).format(
            ms=rng.randint(1, 900),
            word=rng.choice(WORDS),
            num=rng.randint(1000, 99999),
            user=rng.choice(USERS),
        )
        line = f"{ts} {rng.choice(LEVELS):<5} {rng.choice(SERVICES)}: {msg}"
        lines.append(line)
        size += len(line) + 1
    spot = rng.randint(len(lines) // 3, 2 * len(lines) // 3)
    lines.insert(spot, FACT.format(ts=lines[spot][:19]))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--mb", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(make_log(args.mb, args.seed), encoding="utf-8")
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes); question: {QUESTION}")


if __name__ == "__main__":
    main()
