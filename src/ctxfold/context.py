"""Turn what the user passes as ``context`` into inputs the sandbox loads, plus a short description.

The host never reads a large input into memory: strings, bytes and JSON data are written once to
a private input folder; files and folders are read by the sandbox worker itself. The description
the root model sees has a fixed size whatever the input's size.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxfold.errors import ContextError, quoted
from ctxfold.sandbox import ContextSpec

PREVIEW_CHARS = 240
_SNIFF_BYTES = 64 * 1024
_MAX_LISTED_FILES = 8
_SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", ".mypy_cache"}


def input_name(index: int) -> str:
    """The sandbox variable of input number ``index``: ``context_0``, ``context_1`` ... (the
    first one is also ``context``)."""
    return f"context_{index}"


def shown_names(count: int) -> list[str]:
    """The names the root model is told for ``count`` inputs: ``context`` for one, else
    ``context_0 ... context_N``."""
    return ["context"] if count == 1 else [input_name(i) for i in range(count)]


@dataclass(frozen=True, slots=True)
class PreparedContext:
    """One input, ready for the sandbox (``spec``) and described for the root model.

    ``shape`` says what the variable is and how big (``"str, 5 characters in 1 lines"``);
    ``preview`` shows a fixed-size piece of it, labelled (``"Preview: ..."``, or ``"Keys: ..."``
    for a folder); ``size_chars`` is its size (characters, bytes for files and folders).
    """

    spec: ContextSpec
    shape: str
    preview: str
    size_chars: int

    @property
    def name(self) -> str:
        """The sandbox variable it is loaded into."""
        return self.spec["name"]

    @property
    def kind(self) -> str:
        """How the sandbox loads it (see :class:`ctxfold.sandbox.ContextSpec`)."""
        return self.spec["kind"]

    @property
    def description(self) -> str:
        """Shape and preview in one line, as the root model reads it."""
        return f"{self.shape}. {self.preview}" if self.preview else self.shape


def prepare_contexts(
    context: Any = None,
    contexts: Sequence[Any] | None = None,
    *,
    workdir: Path,
    first_index: int = 0,
) -> list[PreparedContext]:
    """Validate the user's input(s) and write in-memory ones under ``workdir``.

    Exactly one input becomes ``context``; several (``contexts=[...]``) become ``context_0`` ...
    ``context_N`` (and ``context`` is ``context_0``). ``first_index`` numbers them from there
    instead (an input added to a session). Raises :class:`ContextError`.
    """
    if context is not None and contexts is not None:
        raise ContextError("give either context= or contexts=, not both")
    if contexts is not None and (
        isinstance(contexts, str | bytes | bytearray) or not isinstance(contexts, Sequence)
    ):
        raise ContextError(f"contexts= must be a list of inputs, got {type(contexts).__name__}")
    items: list[Any] = [context] if contexts is None else list(contexts)
    if contexts is not None and not items:
        raise ContextError("contexts= is empty")
    return [_prepare_one(item, input_name(i), workdir) for i, item in enumerate(items, first_index)]


def _prepare_one(value: Any, name: str, workdir: Path) -> PreparedContext:
    if value is None:
        return _from_text("", name, workdir)
    if isinstance(value, str):
        return _from_text(value, name, workdir)
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        path = workdir / f"{name}.bin"
        path.write_bytes(data)
        preview = _preview(data[:PREVIEW_CHARS].hex(" "))
        return PreparedContext(
            _spec(name, "bytes_file", path), f"bytes, {len(data):,} bytes", preview, len(data)
        )
    if isinstance(value, os.PathLike):
        path = Path(value)
        if path.is_dir():
            return _from_folder(path, name)
        return _from_file(path, name)
    if isinstance(value, list | tuple | dict):
        return _from_data(value, name, workdir)
    raise ContextError(
        f"context of type {type(value).__name__} is not supported: "
        "use str, bytes, a pathlib.Path (file or folder), list or dict"
    )


def _spec(name: str, kind: str, path: Path, files: list[str] | None = None) -> ContextSpec:
    return ContextSpec(name=name, kind=kind, path=str(path.resolve()), files=files or [])


def _preview(text: str) -> str:
    text = text[:PREVIEW_CHARS]
    more = " ..." if len(text) >= PREVIEW_CHARS else ""
    return f"Preview: {json.dumps(text, ensure_ascii=False)}{more}"


def _from_text(text: str, name: str, workdir: Path) -> PreparedContext:
    path = workdir / f"{name}.txt"
    try:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    except UnicodeEncodeError as exc:  # pragma: no cover - surrogatepass accepts lone surrogates
        raise ContextError(f"context text cannot be encoded as UTF-8: {exc.reason}") from None
    lines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
    shape = f"str, {len(text):,} characters in {lines:,} lines"
    return PreparedContext(_spec(name, "text_file", path), shape, _preview(text), len(text))


def _sniff_text(path: Path) -> str:
    """Read the head of a file and make sure it is UTF-8 text; return the decoded head."""
    try:
        with path.open("rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except FileNotFoundError:
        raise ContextError(f"context file not found: {quoted(path)}") from None
    except PermissionError:
        raise ContextError(
            f"context file is not readable (permission denied): {quoted(path)}"
        ) from None
    except OSError as exc:
        raise ContextError(f"cannot read context file {quoted(path)}: {exc.strerror}") from None
    if b"\x00" in head:
        raise ContextError(
            f"context file looks binary, not text: {quoted(path)} (pass its bytes instead: "
            "context=Path(...).read_bytes())"
        )
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(head) == _SNIFF_BYTES and exc.start >= len(head) - 3:  # cut by the sniff window
            return head[: exc.start].decode("utf-8")
        raise ContextError(
            f"context file is not UTF-8 text: {quoted(path)} (byte {exc.start})"
        ) from None


def _from_file(path: Path, name: str) -> PreparedContext:
    try:
        info = path.stat()
    except OSError:
        raise ContextError(f"context file not found: {quoted(path)}") from None
    if not stat.S_ISREG(info.st_mode):  # opening a FIFO would block; a device never ends
        raise ContextError(
            f"context {quoted(path)} is not a regular file or folder (a FIFO, socket or device "
            "cannot be an input; pipe it to standard input with '-' instead)"
        )
    head = _sniff_text(path)
    size = info.st_size
    shape = (
        f"str, the text of file {path.name!r}: {size:,} bytes of UTF-8 text "
        f"(about {size:,} characters)"
    )
    return PreparedContext(_spec(name, "text_file", path), shape, _preview(head), size)


def _from_folder(root: Path, name: str) -> PreparedContext:
    files: list[str] = []
    skipped = 0
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            if filename.startswith(".") or not path.is_file():
                continue
            try:
                _sniff_text(path)
            except ContextError:
                skipped += 1
                continue
            files.append(path.relative_to(root).as_posix())
            total += path.stat().st_size
    if not files:
        raise ContextError(f"context folder has no readable text files: {quoted(root)}")
    listed = ", ".join(repr(f) for f in files[:_MAX_LISTED_FILES])
    more = (
        f", ... ({len(files) - _MAX_LISTED_FILES:,} more)" if len(files) > _MAX_LISTED_FILES else ""
    )
    note = f"; {skipped:,} binary or unreadable files left out" if skipped else ""
    shape = (
        f"dict mapping relative path -> file text for folder {root.name!r}: {len(files):,} files, "
        f"{total:,} bytes in all{note}"
    )
    return PreparedContext(
        _spec(name, "folder", root, files), shape, f"Keys: {listed}{more}", total
    )


def _from_data(value: Any, name: str, workdir: Path) -> PreparedContext:
    path = workdir / f"{name}.json"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ContextError(
            f"context {type(value).__name__} is not JSON-serialisable: {exc}"
        ) from None
    try:
        path.write_text(text, encoding="utf-8")
    except UnicodeEncodeError:  # lone surrogates: \uXXXX escapes load back as the same str
        text = json.dumps(value)
        path.write_text(text, encoding="utf-8")
    if isinstance(value, dict):
        keys = list(value)[:_MAX_LISTED_FILES]
        shape = f"dict with {len(value):,} keys, first keys {keys!r}"
    else:
        types = sorted({type(v).__name__ for v in value[:1000]})
        shape = f"list of {len(value):,} items (types: {', '.join(types) or 'none'})"
    shape = f"{shape}; {len(text):,} characters as JSON"
    return PreparedContext(_spec(name, "json_file", path), shape, _preview(text), len(text))
