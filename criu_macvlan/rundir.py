"""The runtime directories of the warm helpers under ``/run/criu-macvlan``: made private, announced, swept.

Imports nothing of criu-macvlan's but :mod:`.proc`: ``serve``, its socket activation and the
per-dump helper (``warm``) all use it, and none of them is imported back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from .proc import stat_fields

RUN_DIR = "/run/criu-macvlan"
ANNOUNCE_PREFIX = "announce."
NO_HELPER_ENV = "CRIU_MACVLAN_NO_HELPER"  # pre-dump leaves no per-dump helper


def announce_dir(criu_pid: int) -> str:
    """The runtime dir of the announcer ``setup-namespaces`` leaves for CRIU process ``criu_pid``."""
    return f"{RUN_DIR}/{ANNOUNCE_PREFIX}{criu_pid}"


def per_dump_dir(criu_pid: int) -> str:
    """The runtime dir of the helper pre-dump leaves for CRIU process ``criu_pid``."""
    return f"{RUN_DIR}/{criu_pid}"


def private_dir(path: str, dir_fd: int | None = None, make: bool = False) -> int:
    """An fd of directory ``path`` (relative to ``dir_fd``) if it is ours alone (no symlink, owned
    by us, mode 0700); else ``OSError``. ``make``: create it first if it does not exist."""
    if make:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700, dir_fd=dir_fd)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700:
        os.close(fd)
        raise PermissionError(errno.EPERM, "not a directory of ours alone (owner, mode 0700)", path)
    return fd


def write_pid(dir_fd: int, pid: int | None = None) -> None:
    """Announce this helper (or ``pid``): file ``pid`` in ``dir_fd``, written whole (the shim checks it lives).

    Created exclusively without following a symlink, then renamed into place.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink("pid.tmp", dir_fd=dir_fd)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("pid.tmp", flags, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, f"{pid or os.getpid()}\n".encode("ascii"))
    finally:
        os.close(fd)
    os.rename("pid.tmp", "pid", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def sweep() -> None:
    """Remove the runtime dirs of helpers and announcers whose CRIU is gone (a SIGKILLed helper
    leaves its dir, and so does a served action that armed an announcer and then failed).

    A dir is named after its CRIU process (``PID``, ``announce.PID``): stale if that pid is
    dead, a zombie, or a process started after the dir was last changed (the pid was reused).
    """
    try:
        names = os.listdir(RUN_DIR)
    except OSError:
        return
    for name in names:
        pid = name.removeprefix(ANNOUNCE_PREFIX)
        if not pid.isdigit():
            continue
        path = f"{RUN_DIR}/{name}"
        try:
            changed = os.lstat(path).st_mtime
        except OSError:
            continue
        started = _start_time(int(pid))
        if started is None or started > changed + 2:  # /proc/stat's btime is whole seconds
            remove_tree(path)


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch); ``None`` if it is dead or a zombie."""
    try:
        fields = stat_fields(pid)
        with open("/proc/stat", encoding="utf-8") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, IndexError, ValueError, StopIteration):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def remove_tree(path: str) -> None:
    """``rm -rf path``, quietly; nothing to import when there is nothing to remove."""
    if not os.path.lexists(path):
        return
    import shutil  # here: at import it loads bz2 and lzma, a cost for every cold hook that removes nothing

    shutil.rmtree(path, ignore_errors=True)
