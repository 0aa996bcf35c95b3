"""The stage ``pre-dump`` finishes after CRIU has its answer, and ``post-dump``'s wait for it.

CRIU waits for the ``pre-dump`` action script to exit before it seizes the tree.
Reading the links, addresses and routes need not be on that clock: ``pre-dump``
checks and opens the tree's netns, then leaves the read for after its answer
(:attr:`~criu_macvlan.context.ActionContext.later`), and ``post-dump``, which
needs the stage, waits for it. The tree is not frozen during either read, so
reading later sees what an earlier read would have seen, or a later state.

The stage itself is the hand-over: ``pre-dump`` creates it empty and holds an
exclusive ``flock`` on it, on an fd that goes with the read. The reader renames
the finished stage over it (or writes the error to :data:`FAILED`, or removes
the stage if there is nothing to save) and closes that fd. A reader that dies
releases the lock and leaves the empty file. The stage exists from ``pre-dump``'s
answer on, so that ``network-unlock``, which runs only if it exists
(``MacvlanPlugin.criu_macvlan_guards``), always cleans up after a failed dump.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Callable

from .. import images
from ..errors import CriuMacvlanError, ImageError, printable

STAGED = images.STAGED
FAILED = ".criu-macvlan.stage-failed"  # the reader's error, for post-dump to report
WAIT = 60.0  # seconds post-dump waits for a read that is still going on
_POLL = 0.002


def begin(dir_fd: int) -> Pending:
    """Create the empty, locked stage in the images dir ``dir_fd``; the reader finishes it."""
    images.unlink(dir_fd, FAILED)
    images.unlink(dir_fd, STAGED)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(STAGED, flags, 0o644, dir_fd=dir_fd)
    except OSError as exc:
        raise ImageError(f"{STAGED}: cannot create it in the images directory: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return Pending(os.dup(dir_fd), fd)
    except BaseException:
        os.close(fd)
        raise


class Pending:
    """A stage being read: :meth:`run` finishes it (once), wherever it runs."""

    def __init__(self, dir_fd: int, lock: int) -> None:
        self._dir_fd = dir_fd
        self._lock = lock

    def run(self, read: Callable[[], bytes | None]) -> None:
        """Write what ``read`` returns as the stage (``None``: no stage), or its error to :data:`FAILED`."""
        try:
            try:
                data = read()
            except CriuMacvlanError as exc:
                self._failed(str(exc))
            except Exception as exc:  # a bug: post-dump still reports it in one line
                self._failed(f"internal error: {type(exc).__name__}: {exc}")
            else:
                if data is None:
                    images.unlink(self._dir_fd, STAGED)
                else:
                    images.write_atomic(self._dir_fd, STAGED, data)
        except CriuMacvlanError as exc:  # the stage could not be written: post-dump says why
            self._failed(str(exc))
        finally:
            self.close()

    def close(self) -> None:
        """Let go of the stage (a waiting post-dump goes on); the first call only."""
        if self._lock >= 0:
            os.close(self._lock)
            os.close(self._dir_fd)
            self._lock = self._dir_fd = -1

    def _failed(self, message: str) -> None:
        # if even this fails, post-dump finds the stage empty and says the read did not finish
        with contextlib.suppress(CriuMacvlanError):
            images.write_atomic(self._dir_fd, FAILED, message.encode("utf-8", "replace"))


def reading(dir_fd: int) -> bool:
    """A read is going on: the stage is locked (the same ``pre-dump`` delivered again, as runc's CRIU
    does, where no marker answered the second delivery)."""
    try:
        fd = os.open(STAGED, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False  # no stage, or not one of ours: reading it says which
    try:
        return not _try_lock(fd)
    finally:
        os.close(fd)


def wait(dir_fd: int, timeout: float = WAIT) -> None:
    """Return once no read of ``pre-dump``'s is going on; raise what it failed with, if it did."""
    deadline = time.monotonic() + timeout
    while reading(dir_fd):  # opened anew each time: the finished stage is a new file, never locked
        if time.monotonic() > deadline:
            raise CriuMacvlanError(f"pre-dump's read of the macvlans did not finish in {timeout:g} s")
        time.sleep(_POLL)
    failed = images.read_file(dir_fd, FAILED, limit=4096)
    if failed is not None:
        raise CriuMacvlanError(printable(failed.decode("utf-8", "replace")))
    try:
        st = os.stat(STAGED, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:  # anything else: reading it says what is wrong
        raise CriuMacvlanError("the process that read the macvlans at pre-dump ended before it staged them "
                               "(see CRIU's log)")


def drop(dir_fd: int) -> bool:
    """Remove the stage and a read's error; whether there was a stage."""
    images.unlink(dir_fd, FAILED)
    return images.unlink(dir_fd, STAGED)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True  # not lockable: not a stage being read
    return True
