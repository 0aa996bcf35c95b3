"""Network namespace handles, without netlink."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import CriuMacvlanError

CLONE_NEWNET = 0x40000000


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


def key(fd: int) -> tuple[int, int]:
    """What identifies the namespace of ``fd``: ``(st_dev, st_ino)``."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def same(fd_a: int, fd_b: int) -> bool:
    return key(fd_a) == key(fd_b)


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants, from ``/proc/<pid>/task/<tid>/children``.

    Processes that exit during the walk are skipped (the tree still runs at
    ``pre-dump``); a child is listed under the thread that forked it, so every
    thread's list is read.
    """
    seen: set[int] = set()
    order: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        order.append(pid)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", encoding="utf-8") as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                continue
    return order


def netns_of_tree(root: int) -> dict[tuple[int, int], int]:
    """Every distinct network namespace of the tree of ``root``: ``(st_dev, st_ino)`` -> first pid in it."""
    found: dict[tuple[int, int], int] = {}
    for pid in tree_pids(root):
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        found.setdefault((st.st_dev, st.st_ino), pid)
    return found


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    import ctypes  # only here: a cost to every cold action otherwise

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def entered(netns_fd: int | None) -> Iterator[None]:
    """Run the block in the netns ``netns_fd`` (this thread only), then come back."""
    if netns_fd is None:
        yield
        return
    home = open_own()
    try:
        _setns(netns_fd)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)
