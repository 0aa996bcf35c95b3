"""Network namespace handles, without netlink."""

from __future__ import annotations

import os

from .errors import CriuMacvlanError


def open_of_pid(pid: int) -> int:
    """Open ``/proc/<pid>/ns/net``; the caller closes the fd."""
    try:
        return os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CriuMacvlanError(f"cannot open the network namespace of pid {pid}: {exc.strerror}") from exc


def open_own() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def inode(fd: int) -> int:
    return os.fstat(fd).st_ino


def same(fd_a: int, fd_b: int) -> bool:
    a, b = os.fstat(fd_a), os.fstat(fd_b)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
