"""``/proc/<pid>/stat``, read one way: the fields after the command name.

The name is in parentheses and may hold blanks and ``)``, so the fields are split
after its last ``)``. Bytes, not text: serve's forked children read it per request
and import no codec for it. Imports nothing of criu-macvlan's.
"""

from __future__ import annotations


def stat_fields(pid: int) -> list[bytes]:
    """The fields of ``/proc/<pid>/stat`` from the state on (``[0]`` state, ``[1]`` ppid,
    ``[19]`` start time); ``OSError`` if there is no such process."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[-1].split()


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
