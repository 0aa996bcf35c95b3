"""Markers of the actions already handled for a CRIU process: a repeated delivery is free.

CRIU can run the action script twice per action: in RPC mode it reads the client's
config file twice (once before and once after applying the RPC options), and each
``action-script`` line it reads adds the script again, so runc's ``runc.conf`` makes
every action arrive twice. The shell hook checks for this module's marker before it
starts Python: after an action was handled **successfully** for CRIU process ``PID``,
``/run/criu-macvlan/done/PID.START.ACTION`` exists, ``START`` being the process's
start time (``/proc/PID/stat`` field 22), so a reused pid never matches. A failed
action leaves no marker: its next delivery runs again.

Best effort: without a marker (not root, a read-only ``/run``) every delivery runs,
as before; all hooks are idempotent.
"""

from __future__ import annotations

import contextlib
import os

from .proc import process_start
from .rundir import RUN_DIR, private_dir

DONE = "done"
DONE_DIR = f"{RUN_DIR}/{DONE}"


def marker_name(pid: int, start: str, action: str) -> str:
    return f"{pid}.{start}.{action}"


def open_done_dir() -> int:
    """The markers' directory, checked like every directory on the way to it."""
    run = private_dir(RUN_DIR, make=True)
    try:
        return private_dir(DONE, run, make=True)
    finally:
        os.close(run)


def record(criu_pid: int, action: str) -> bool:
    """Mark ``action`` handled for CRIU process ``criu_pid``, sweeping the markers of dead ones.

    ``False`` if no marker could be made (then the next delivery runs again).
    """
    start = process_start(criu_pid)
    if start is None or "/" in action:
        return False
    try:
        done = open_done_dir()
    except OSError:
        return False
    try:
        fd = os.open(marker_name(criu_pid, start, action),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=done)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError:
        return False
    finally:
        sweep(done)
        os.close(done)
    return True


def sweep(done: int) -> int:
    """Remove the markers (in directory fd ``done``) of CRIU processes that are gone; how many."""
    removed = 0
    try:
        names = os.listdir(done)
    except OSError:
        return 0
    for name in names:
        pid, _, rest = name.partition(".")
        start = rest.partition(".")[0]
        if pid.isdigit() and process_start(int(pid)) == start:
            continue
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=done)
            removed += 1
    return removed
