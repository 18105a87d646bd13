"""What the root model is told after its code ran."""

from __future__ import annotations

import json

from ctxfold.sandbox import CellResult

_ANSWER_PREVIEW = 300


def describe_cells(cells: list[CellResult], *, cell_seconds: float) -> str:
    """One user message reporting every cell of a turn: output, errors, and engine notes."""
    parts = []
    for i, cell in enumerate(cells):
        head = "Output:" if len(cells) == 1 else f"Output of block {i + 1}:"
        parts.append(_describe_one(cell, head, cell_seconds))
    return "\n\n".join(parts)


def _describe_one(cell: CellResult, head: str, cell_seconds: float) -> str:
    lines: list[str] = []
    out = cell.stdout
    if cell.stderr.strip():
        out = f"{out}{'' if not out or out.endswith(chr(10)) else chr(10)}{cell.stderr}"
    if out.strip():
        lines += [head, "```", out.rstrip("\n"), "```"]
    elif not cell.error:
        lines.append(f"{head} (nothing was printed: print what you want to see)")
    if cell.error:
        lines += ["Error:", "```", cell.error.rstrip("\n"), "```"]
    if cell.timed_out:
        lines.append(
            f"The cell was stopped at its time limit of {cell_seconds:g} s. Work on smaller "
            "pieces or use llm_batch."
        )
    if cell.restarted:
        lines.append(
            "The REPL process died and a fresh one was started: every variable you made is lost "
            "(`context` and the helper functions are loaded again)."
        )
    if cell.restored:
        names = ", ".join(cell.restored)
        lines.append(f"Note: your code overwrote {names}; restored. Do not assign to these names.")
    if cell.answer_changed and not cell.answer.ready:
        preview = json.dumps(cell.answer.content[:_ANSWER_PREVIEW], ensure_ascii=False)
        lines.append(f'answer["content"] is now {preview}; answer["ready"] is False.')
    return "\n".join(lines)
