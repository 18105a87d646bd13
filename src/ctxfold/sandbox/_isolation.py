"""How the "process" sandbox confines its worker on Linux.

Three layers, each used as far as this machine allows:

1. Namespaces. The worker runs under bubblewrap (``bwrap``) in new network, pid, ipc and uts
   namespaces with a minimal filesystem: read-only system directories (``/usr`` and its
   ``/bin``/``/lib`` links), the interpreter's prefixes (the venv directory only, never the
   project around it), a few ``/etc`` files the dynamic linker needs, the worker script, the
   inputs (read-only, at their own paths), the scratch directory (read-write: the only writable
   place with a private tmpfs ``/tmp``), a fresh ``/proc`` and a minimal ``/dev``. Without
   bubblewrap, ``unshare --net`` gives the worker a private network only.
2. An unprivileged uid. A host running as root starts the worker as root (to read the inputs);
   the worker then drops to a uid of this sandbox's own before any model code runs, so
   ``RLIMIT_NPROC`` applies and root-owned files, ``/proc/sys`` and the host's processes are out
   of reach. A worker that cannot drop root refuses to start.
3. Resource limits, set by the worker on itself at start-up: address space, CPU seconds,
   processes, file size, open files, no core dumps.

What the fallbacks leave open is documented on :class:`ProcessSandbox`.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ctxfold.errors import SandboxError

BWRAP = "bwrap+netns+rlimits"
UNSHARE = "unshare-net+rlimits"
RLIMITS = "rlimits"
NONE = "none"

WORKER_DIR = "/ctxfold"  # where bubblewrap shows the worker program (its source or bytecode)
WORKER_INSIDE = f"{WORKER_DIR}/_worker.py"
_PROBE_TIMEOUT_S = 10.0
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/alternatives",
)
_UID_BASE, _UID_SPAN = 900_000_000, 100_000_000
_NOBODY = 65534
_MIN_ADDRESS_SPACE_MB = 64
_PR_SET_DUMPABLE = 4


class IsolationWarning(UserWarning):
    """The process sandbox runs with less isolation than bubblewrap gives (said once)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one sandbox. The worker sets the rlimits on itself before any model
    code runs; under bubblewrap the scratch folder, ``/tmp`` and ``/dev/shm`` are RAM-backed
    mounts of bounded size, counted within ``memory_mb`` (the address-space limit is what is
    left of it)."""

    memory_mb: int = 8192
    cpu_seconds: int = 3600
    max_processes: int = 256
    max_file_mb: int = 1024
    open_files: int = 1024
    scratch_mb: int = 1024
    tmp_mb: int = 256  # /tmp, and /dev/shm as much again

    @classmethod
    def checked(
        cls,
        *,
        memory_mb: int,
        cpu_seconds: int,
        max_processes: int,
        max_file_mb: int,
        scratch_mb: int | None = None,
        tmp_mb: int | None = None,
    ) -> Limits:
        """Limits from a sandbox's options, each a whole number >= 1 (else :class:`SandboxError`).
        ``scratch_mb`` defaults to ``memory_mb // 8`` (at most 1024), ``tmp_mb`` to
        ``memory_mb // 16`` (at most 256); what they take out of ``memory_mb`` must leave the
        worker at least 64 MiB."""
        scratch_mb = min(1024, memory_mb // 8) if scratch_mb is None else scratch_mb
        tmp_mb = min(256, memory_mb // 16) if tmp_mb is None else tmp_mb
        options = {
            "memory_mb": memory_mb,
            "cpu_seconds": cpu_seconds,
            "max_processes": max_processes,
            "max_file_mb": max_file_mb,
            "scratch_mb": scratch_mb,
            "tmp_mb": tmp_mb,
        }
        for name, value in options.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SandboxError(f"{name} must be a whole number >= 1, got {value!r}")
        if memory_mb - scratch_mb - 2 * tmp_mb < _MIN_ADDRESS_SPACE_MB:
            raise SandboxError(
                f"memory_mb={memory_mb} leaves under {_MIN_ADDRESS_SPACE_MB} MiB for the worker "
                f"once scratch_mb={scratch_mb} and twice tmp_mb={tmp_mb} are taken out"
            )
        return cls(**options)

    @property
    def ram_folders_mb(self) -> int:
        """What the RAM-backed folders may hold in all."""
        return self.scratch_mb + 2 * self.tmp_mb

    def to_worker(
        self,
        uid: int | None,
        *,
        processes: bool = True,
        ram_folders: bool = False,
        seccomp: bytes | None = None,
    ) -> str:
        """The JSON argument the worker reads. ``uid``: drop to it (root hosts only).
        ``ram_folders``: the folders are RAM-backed mounts, so the address space gets what is
        left of ``memory_mb``. ``seccomp``: a filter the worker loads itself (when no wrapper
        loads one for it)."""
        memory = self.memory_mb - (self.ram_folders_mb if ram_folders else 0)
        spec: dict[str, int | str | None] = {
            "memory_mb": memory,
            "cpu_seconds": self.cpu_seconds,
            "file_mb": self.max_file_mb,
            "open_files": self.open_files,
            "processes": self.max_processes if processes else None,
            "uid": uid,
            "seccomp": base64.b64encode(seccomp).decode("ascii") if seccomp else None,
        }
        return json.dumps(spec, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Plan:
    """How to start the worker at one isolation level."""

    level: str
    prefix: tuple[str, ...] = ()  # the wrapper command (``unshare ...``) before the interpreter
    # killpg(worker pid) reaches the worker: False under bubblewrap, whose --new-session puts the
    # sandbox in a session of its own (the host then interrupts over the channel)
    signals_reach_worker: bool = True
    # exit codes 129..192 mean "killed by signal code-128" (bubblewrap reports them so)
    shifted_exit_codes: bool = False
    uid: int | None = None  # the uid the worker drops to (root hosts), else None
    sized: bool = True  # bubblewrap can bound its tmpfs mounts (--size, bubblewrap >= 0.7)

    def worker_uid(self, python: str) -> int | None:
        """The uid the worker is to drop to. Outside bubblewrap the dropped worker must still
        reach its interpreter on the host's own filesystem (not so for one under /root)."""
        if self.uid is None or self.level == BWRAP or _open_to_all(python):
            return self.uid
        _warn_once(
            f"the sandbox worker runs as root: its interpreter ({python}) is not readable by an "
            "unprivileged user, and without bubblewrap it cannot be shown to one"
        )
        return None

    def command(
        self,
        python: str,
        worker: Path,
        worker_args: Sequence[str],
        *,
        scratch: str,
        inputs: Sequence[str],
        limits: Limits,
        seccomp_fd: int | None = None,
    ) -> list[str]:
        """The full argv that starts the worker under this plan."""
        if self.level != BWRAP:
            return [*self.prefix, python, "-I", "-u", str(worker), *worker_args]
        view = _bwrap_view(python, worker, scratch, inputs, limits if self.sized else None)
        if seccomp_fd is not None:
            view += ["--seccomp", str(seccomp_fd)]
        inside = f"{WORKER_DIR}/{worker.name}"
        return [*self.prefix, *view, python, "-I", "-u", inside, *worker_args]


def plan_for(isolate: bool | None) -> Plan:
    """The plan for ``isolate`` (None: the best this machine allows; False: none; True: bwrap,
    or :class:`SandboxError`)."""
    if isolate is False:
        return Plan(NONE)
    level, prefix = _best()
    if isolate is True and level != BWRAP:
        raise SandboxError(
            "isolate=True needs bubblewrap with working user/network/pid namespaces "
            f"(install the 'bubblewrap' package); this machine allows only {level!r}"
        )
    uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if os.geteuid() == 0 else None
    if level == BWRAP:
        return Plan(
            level,
            prefix,
            signals_reach_worker=False,
            shifted_exit_codes=True,
            uid=uid,
            sized=_bwrap_sizes(prefix[0]),
        )
    if os.geteuid() != 0:
        _protect_host()
    return Plan(level, prefix, uid=uid)


@functools.cache
def _best() -> tuple[str, tuple[str, ...]]:
    """The best isolation level here and its wrapper command (probed once per process)."""
    bwrap = shutil.which("bwrap")
    if bwrap is not None and _runs([*_bwrap_base(bwrap), *_PROBE_VIEW, "true"]):
        return BWRAP, tuple(_bwrap_base(bwrap))
    why = "bubblewrap (bwrap) is not installed" if bwrap is None else "bwrap is refused here"
    unshare = shutil.which("unshare")
    for variant in (["--net"], ["--map-root-user", "--net"]):
        if unshare is not None and _runs([unshare, *variant, "--", "true"]):
            _warn_once(f"{why}: the sandbox worker gets a private network and rlimits only")
            return UNSHARE, (unshare, *variant, "--")
    _warn_once(f"{why} and unshare --net fails: the sandbox worker is confined by rlimits only")
    return RLIMITS, ()


_PROBE_VIEW = ("--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev")


@functools.cache
def _bwrap_sizes(bwrap: str) -> bool:
    """Whether this bubblewrap can bound a tmpfs (``--size``); said once when it cannot."""
    probe = [*_bwrap_base(bwrap), *_PROBE_VIEW, "--size", "1048576", "--tmpfs", "/tmp", "true"]
    if _runs(probe):
        return True
    _warn_once(
        "this bubblewrap cannot bound the size of a tmpfs (--size needs bubblewrap 0.7): the "
        "sandbox's scratch folder, /tmp and /dev/shm are not bounded"
    )
    return False


def _bwrap_base(bwrap: str) -> list[str]:
    args = [bwrap, "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    args += ["--unshare-cgroup-try", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if os.geteuid() == 0:  # the worker needs these two to drop root; it then has no capability
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user"]  # RLIMIT_NPROC then counts this sandbox's processes only
    args += ["--hostname", "sandbox"]
    return args


def _runs(argv: list[str]) -> bool:
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, IsolationWarning, stacklevel=4)


@functools.cache
def _protect_host() -> None:
    """Fallback levels with a non-root host: the worker has the host's uid, so make this process
    non-dumpable (no ptrace, no reading its /proc environ or memory). Signals still reach it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def _bwrap_view(
    python: str, worker: Path, scratch: str, inputs: Sequence[str], limits: Limits | None
) -> list[str]:
    """bubblewrap options that build the worker's filesystem (after the base options). With
    ``limits``, ``/tmp``, ``/dev/shm`` and the scratch folder are tmpfs mounts of bounded size;
    without (an old bubblewrap), ``/tmp`` and ``/dev/shm`` are unbounded and the scratch folder
    is the host's, bound read-write."""

    def tmpfs(path: str, mb: int | None) -> list[str]:
        size = ["--size", str(mb * 1024 * 1024)] if mb is not None else []
        return [*size, "--perms", "1777", "--tmpfs", path]

    tmp_mb = limits.tmp_mb if limits else None
    args: list[str] = tmpfs("/tmp", tmp_mb)
    for top in map(Path, _SYSTEM_DIRS):
        if top.is_symlink():
            args += ["--symlink", str(top.readlink()), str(top)]
        elif top.is_dir():
            args += ["--ro-bind", str(top), str(top)]
    args += ["--proc", "/proc", "--dev", "/dev", *tmpfs("/dev/shm", tmp_mb)]
    binds = [(p, p, "--ro-bind-try") for p in _ETC_FILES if Path(p).exists()]
    binds += [(p, p, "--ro-bind") for p in interpreter_dirs(python)]
    binds += [(p, p, "--ro-bind-try") for p in inputs]  # a missing one: the worker says so
    binds += [(str(worker), f"{WORKER_DIR}/{worker.name}", "--ro-bind")]
    binds += [(scratch, scratch, "--tmpfs" if limits else "--bind")]
    made = {"/", "/tmp", "/dev", "/proc", *_SYSTEM_DIRS}
    for source, dest, how in binds:
        # parents made here are 0755 (bubblewrap would make them 0700: unusable after the uid drop)
        for parent in reversed(Path(dest).parents):
            if str(parent) not in made and not any(_inside(str(parent), d) for d in _SYSTEM_DIRS):
                made.add(str(parent))
                args += ["--perms", "0755", "--dir", str(parent)]
        if how == "--tmpfs":
            assert limits is not None
            args += tmpfs(dest, limits.scratch_mb)
        else:
            args += [how, source, dest]
    return [*args, "--chdir", scratch]


@functools.cache
def interpreter_dirs(python: str) -> tuple[str, ...]:
    """The directories ``python`` needs (its prefixes and its real executable's directory),
    without ones already inside the bound system directories."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    else:
        code = "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix]))"
        try:
            out = subprocess.run(
                [python, "-I", "-c", code],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
            prefixes = [str(p) for p in json.loads(out)]
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            raise SandboxError(f"could not start the sandbox worker ({python}): {exc}") from exc
    candidates = [*prefixes, str(Path(python).resolve().parent)]
    dirs: list[str] = []
    for raw in sorted({os.path.realpath(p) for p in candidates}, key=len):
        if raw == "/" or any(_inside(raw, d) for d in (*_SYSTEM_DIRS, *dirs)):
            continue
        dirs.append(raw)
    # a venv's own path (bin/python symlinks) as given, when it differs from its real path
    for given in {*prefixes}:
        if os.path.realpath(given) != given and not any(_inside(given, d) for d in _SYSTEM_DIRS):
            dirs.append(given)
    return tuple(dirs)


@functools.cache
def _open_to_all(python: str) -> bool:
    """Whether a uid with no rights of its own can run ``python`` (all its directories)."""
    for path in (*interpreter_dirs(python), str(Path(python).resolve())):
        target = Path(path).resolve()
        try:
            if not target.stat().st_mode & stat.S_IROTH:
                return False
            if not all(d.stat().st_mode & stat.S_IXOTH for d in (target, *target.parents)):
                return False
        except OSError:
            return False
    return True


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def kill_uid(uid: int) -> None:
    """SIGKILL every process whose real uid is ``uid`` (a sandbox's own uid; root hosts, fallback
    levels, where no pid namespace ends them). Repeats while a fork bomb keeps making more."""
    for _ in range(100):
        found = False
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and _real_uid(entry.name) == uid:
                found = True
                _kill_checked(int(entry.name), uid)
        if not found:
            return


def _real_uid(pid: str) -> int | None:
    try:
        with Path(f"/proc/{pid}/status").open(encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _kill_checked(pid: int, uid: int) -> None:
    """Kill ``pid`` through a pidfd, checking after opening it that it is still ``uid``'s."""
    try:
        pidfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        return
    try:
        if _real_uid(str(pid)) == uid:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)
