"""What went wrong, from CRIU's log: the line that names the cause.

CRIU logs every error as ``Error (FILE:LINE): MESSAGE``, behind a timestamp with
``-v4`` (``(00.050079) ``) and, for a restored task, behind its pid
right-aligned (``     1: Error (...)``). Its first error is not always the
cause: ``rlimit: Can't setup RLIMIT_NOFILE`` is logged as an error and CRIU
goes on without it; and its last is a summary (``Dumping FAILED.``). The cause
is the first error that is neither (CRIU's RPC ``cr_errmsg`` is its first error
of all: the ``rlimit`` line, where the kernel refuses that).
"""

from __future__ import annotations

import os
import re

# The tail read: a -v4 log of a large tree runs to many megabytes; its errors come last.
MAX_LOG_BYTES = 8 << 20

_ERROR = re.compile(r"^(?:\(\s*[\d.]+\)\s*)?(?:\d+:\s*)?Error \([^)]*\):\s*(?P<message>.*\S)")
_NOT_THE_CAUSE = (
    re.compile(r"^rlimit: Can't setup RLIMIT_NOFILE"),  # CRIU carries on with the limit it has
    re.compile(r"^[\w -]+ FAILED\.?$"),  # the summary: "Dumping FAILED.", "Restoring FAILED."
)


def error_message(line: str) -> str | None:
    """The message of an ``Error (...)`` line of CRIU's log (any prefix), else ``None``."""
    match = _ERROR.match(line.strip())
    return match.group("message") if match else None


def is_cause(message: str) -> bool:
    return not any(pattern.match(message) for pattern in _NOT_THE_CAUSE)


def cause(text: str) -> str | None:
    """The first error of a CRIU log that says what went wrong, or ``None``."""
    for line in text.splitlines():
        message = error_message(line)
        if message is not None and is_cause(message):
            return message
    return None


def read_tail(dir_fd: int, name: str, limit: int = MAX_LOG_BYTES) -> str:
    """The last ``limit`` bytes of log ``name`` in directory ``dir_fd`` ('' if unreadable)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return ""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, limit, max(0, size - limit))
    except OSError:
        return ""
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace")
