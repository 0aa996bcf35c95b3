"""Process plumbing the helpers share: ``/proc/<pid>/{stat,cmdline,environ}``, a detached process's fds.

``/proc/<pid>/stat`` is read one way: the command name is in parentheses and may
hold blanks and ``)``, so the fields are split after its last ``)``. Bytes, not
text: serve's forked children read it per request and import no codec for it.
Imports nothing of criu-macvlan's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Sequence


def detach_fds(keep: Sequence[int]) -> list[int]:
    """In a process that outlives the hook (a helper, an announcer): the fds ``keep`` moved above
    2, stdin, stdout and stderr on /dev/null, every other fd closed; the moved fds, in order.

    CRIU runs the hook without stdin, so one of ``keep`` may be fd 0, which /dev/null
    replaces next; and a caller reading CRIU's stderr must see its end when CRIU exits.
    """
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in keep]
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    for fd in map(int, os.listdir("/proc/self/fd")):
        if fd > 2 and fd not in moved:
            with contextlib.suppress(OSError):  # the listing's own fd
                os.close(fd)
    return moved


def stat_fields(pid: int) -> list[bytes]:
    """The fields of ``/proc/<pid>/stat`` from the state on (``[0]`` state, ``[1]`` ppid,
    ``[19]`` start time); ``OSError`` if there is no such process."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[-1].split()


def strings(pid: int, name: str) -> list[str]:
    """The NUL-separated strings of ``/proc/<pid>/<name>`` (``cmdline``, ``environ``), decoded as
    file names are (undecodable bytes kept as surrogates); ``OSError`` if there is no such process."""
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return [os.fsdecode(item) for item in f.read().split(b"\0") if item]


def parent_of(pid: int) -> int | None:
    """The parent of process ``pid``, ``None`` if it is gone."""
    try:
        return int(stat_fields(pid)[1])
    except (OSError, IndexError, ValueError):
        return None


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` (clock ticks after boot, as text), ``None`` if it is gone."""
    try:
        fields = stat_fields(pid)
    except OSError:
        return None
    return fields[19].decode("ascii") if len(fields) > 19 else None
