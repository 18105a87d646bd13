"""One Markdown table over several bench result folders, each under a label.

    python benchmarks/compare.py base=benchmarks/results/local-quality/base-test \
        before=benchmarks/results/local-quality/before-test \
        after=benchmarks/results/local-quality/after-test

Each folder's rows (``results.jsonl``) keep their task and length; their method becomes
``METHOD (LABEL)``, so runs of one method under different settings sit side by side.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ctxfold.bench.report import markdown
from ctxfold.bench.runner import load_rows


def labelled_rows(pairs: list[str]) -> list[dict[str, object]]:
    """The rows of every ``LABEL=FOLDER`` pair, their method relabelled."""
    rows: list[dict[str, object]] = []
    for pair in pairs:
        label, sep, folder = pair.partition("=")
        if not sep or not label or not folder:
            raise SystemExit(f"compare: expected LABEL=FOLDER, got {pair!r}")
        path = Path(folder) / "results.jsonl"
        if not path.is_file():
            raise SystemExit(f"compare: no results at {path}")
        for row in load_rows(path):
            rows.append({**row, "method": f"{row['method']} ({label})"})
    return rows


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    print(markdown(labelled_rows(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
