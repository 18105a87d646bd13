"""Per-instance comparison of two bench folders run on the same instances: for each task, how
many instances both got right, only the first, only the second, neither, and McNemar's exact
p-value for the difference (a two-sided binomial test on the instances that changed).

    python benchmarks/train_small/paired.py before=DIR after=DIR
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from scipy.stats import binomtest

from ctxfold.bench import load_rows


def _scores(folder: str) -> dict[tuple[str, str], float]:
    path = Path(folder) / "results.jsonl"
    if not path.is_file():
        raise SystemExit(f"paired: no results at {path}")
    return {(row["task"], row["instance"]): float(row["score"]) for row in load_rows(path)}


def main(pairs: list[str]) -> None:
    if len(pairs) != 2 or not all("=" in pair for pair in pairs):
        raise SystemExit("usage: paired.py LABEL=DIR LABEL=DIR")
    (first, a_dir), (second, b_dir) = (pair.split("=", 1) for pair in pairs)
    a, b = _scores(a_dir), _scores(b_dir)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for key in sorted(a.keys() & b.keys()):
        right = (a[key] >= 1.0, b[key] >= 1.0)
        slot = {(True, True): 0, (True, False): 1, (False, True): 2, (False, False): 3}[right]
        counts[key[0]][slot] += 1
        counts["all"][slot] += 1
    print(f"| task | n | both right | only {first} | only {second} | neither | p (McNemar) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for task in [*sorted(t for t in counts if t != "all"), "all"]:
        both, only_a, only_b, neither = counts[task]
        changed = only_a + only_b
        p = binomtest(only_a, changed, 0.5).pvalue if changed else 1.0
        n = both + only_a + only_b + neither
        print(f"| {task} | {n} | {both} | {only_a} | {only_b} | {neither} | {p:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
