"""Turn result rows into a Markdown table and PNG plots."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any

_COLUMNS = (
    "task",
    "length (tokens)",
    "method",
    "n",
    "score",
    "root in",
    "root out",
    "sub in",
    "sub out",
    "sub calls",
    "iterations",
    "wall s",
    "cost $",
    "errors",
)


def _bucket(row: dict[str, Any]) -> int:
    """Instances of one requested length share a bucket (rounded to 3 significant digits)."""
    n = int(row.get("requested_length") or row.get("length_tokens") or 0)
    if n <= 0:
        return 0
    digits = len(str(n)) - 3
    return round(n, -digits) if digits > 0 else n


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean metrics per (task, length bucket, method), in a stable order."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], _bucket(row), row["method"])].append(row)
    table = []
    for (task, length, method), items in sorted(groups.items()):
        ok = [r for r in items if not r.get("error")]

        def avg(key: str, rows: list[dict[str, Any]] = ok) -> float:
            return mean(float(r.get(key) or 0) for r in rows) if rows else 0.0

        table.append(
            {
                "task": task,
                "length": length,
                "method": method,
                "truncated": any(r.get("truncated") for r in items),
                "n": len(items),
                "score": mean(float(r.get("score") or 0) for r in items),
                "root_in": avg("root_input_tokens"),
                "root_out": avg("root_output_tokens"),
                "sub_in": avg("sub_input_tokens"),
                "sub_out": avg("sub_output_tokens"),
                "sub_calls": avg("sub_calls"),
                "iterations": avg("iterations"),
                "wall_s": avg("wall_s"),
                "cost": avg("cost_usd"),
                "errors": len(items) - len(ok),
            }
        )
    return table


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The summary as a Markdown table. ``*`` marks a method whose input was cut to the window."""
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for s in summarise(rows):
        cells = [
            s["task"],
            f"{s['length']:,}",
            s["method"] + ("*" if s["truncated"] else ""),
            str(s["n"]),
            f"{100 * s['score']:.1f}",
            f"{s['root_in']:,.0f}",
            f"{s['root_out']:,.0f}",
            f"{s['sub_in']:,.0f}",
            f"{s['sub_out']:,.0f}",
            f"{s['sub_calls']:.1f}",
            f"{s['iterations']:.1f}",
            f"{s['wall_s']:.1f}",
            f"{s['cost']:.4f}",
            str(s["errors"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "score: mean over instances, in percent. Token columns: mean per instance. "
        "`*`: the input was cut to the model's window."
    )
    return "\n".join(lines)


def plots(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """PNG plots per task: score vs input length, and root tokens vs input length, per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    table = summarise(rows)
    for task in sorted({s["task"] for s in table}):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for method in sorted({s["method"] for s in table if s["task"] == task}):
            pts = sorted(
                (s for s in table if s["task"] == task and s["method"] == method),
                key=lambda s: s["length"],
            )
            xs = [s["length"] for s in pts]
            for ax, ys in (
                (axes[0], [100 * s["score"] for s in pts]),
                (axes[1], [s["root_in"] + s["root_out"] for s in pts]),
            ):
                (line,) = ax.plot(xs, ys, marker="o", label=method)
                cut = [(x, y) for x, y, s in zip(xs, ys, pts, strict=True) if s["truncated"]]
                if cut:  # hollow markers: the input was cut to the model's window
                    cx, cy = zip(*cut, strict=True)
                    ax.scatter(
                        cx, cy, s=120, facecolors="white", edgecolors=line.get_color(), zorder=3
                    )
        for ax, title in zip(axes, ("score (%)", "root-model tokens per instance"), strict=True):
            ax.set_xscale("log")
            ax.set_xlabel("input length (tokens)")
            ax.set_title(f"{task}: {title}")
            ax.grid(alpha=0.3)
        axes[0].set_ylim(-5, 105)
        fig.text(0.01, 0.01, "hollow marker: input cut to the model's window", fontsize=8)
        axes[0].legend()
        path = out_dir / f"{task}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made
