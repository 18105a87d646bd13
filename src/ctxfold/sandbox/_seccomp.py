"""The system-call filter every sandbox worker runs under (seccomp, built with libseccomp).

Dropping capabilities is not enough on its own: an unprivileged process may create a *user
namespace* and get every capability inside it, which opens mounting filesystems and most of the
kernel surface behind container escapes. The filter refuses, with ``EPERM``:

- ``unshare`` and ``clone`` asking for a new user namespace (``CLONE_NEWUSER``), and ``setns``;
- ``clone3`` (``ENOSYS``: its flags sit in memory the filter cannot read, and the C library
  then falls back to ``clone``, whose flags it can);
- kernel interfaces that unprivileged code rarely needs and attackers often do: keyrings
  (``keyctl``, ``add_key``, ``request_key``), ``bpf``, ``userfaultfd``, ``perf_event_open``,
  ``io_uring``.

Calls made for another architecture's ABI (32-bit calls on x86-64) kill the process, as
libseccomp does by default. The program is built once per process with ``pyseccomp`` (a
``ctypes`` binding of the system's ``libseccomp.so.2``) and handed to bubblewrap
(``--seccomp FD``) or, at the other isolation levels, loaded by the worker itself before any
model code runs.
"""

from __future__ import annotations

import errno
import functools
import os
import tempfile
import warnings

from ctxfold.sandbox._isolation import IsolationWarning

__all__ = ["DENIED", "filter_fd", "syscall_filter"]

CLONE_NEWUSER = 0x10000000
DENIED = (
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "userfaultfd",
    "perf_event_open",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)


@functools.cache
def syscall_filter() -> bytes | None:
    """The compiled BPF program (``struct sock_filter`` entries), or ``None`` where libseccomp
    is missing (said once, as an :class:`~ctxfold.sandbox.IsolationWarning`)."""
    try:
        import pyseccomp as seccomp

        rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        newuser = seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)
        for call in ("unshare", "clone"):
            rules.add_rule(seccomp.ERRNO(errno.EPERM), call, newuser)
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        for call in DENIED:
            rules.add_rule(seccomp.ERRNO(errno.EPERM), call)
        with tempfile.TemporaryFile() as out:
            rules.export_bpf(out)
            out.seek(0)
            return out.read()
    except Exception as exc:  # not installed, no libseccomp.so.2, an unknown architecture
        warnings.warn(
            f"no system-call filter for the sandbox ({type(exc).__name__}: {exc}): code in it "
            "may create user namespaces (install libseccomp2 and the pyseccomp package)",
            IsolationWarning,
            stacklevel=3,
        )
        return None


def filter_fd(program: bytes) -> int:
    """A readable fd holding ``program`` from its start (for ``bwrap --seccomp FD``); the
    caller closes it once the sandbox has started."""
    fd = os.memfd_create("ctxfold-seccomp", 0)  # not inheritable: pass_fds hands it over
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
