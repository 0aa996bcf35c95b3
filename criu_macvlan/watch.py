"""Whether the CRIU process a hook works for still lives.

A hook that makes links while CRIU waits must stop when CRIU dies: nothing would
ever use or remove those links, and the task CRIU forked for the restored tree
(which outlives it) keeps their netns alive. ``prctl(PR_SET_PDEATHSIG)`` cannot
tell: the action script's parent is the shell CRIU started, not CRIU. A pidfd of
CRIU itself can, and costs one ``poll`` per check.
"""

from __future__ import annotations

import os
import select

from .errors import CriuMacvlanError


class CriuGone(CriuMacvlanError):
    """The CRIU process the hook works for exited."""


class CriuWatch:
    """A pidfd of CRIU's process; ``pid`` ``None`` (CRIU's pid unknown): never gone."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self._fd: int | None = None
        self._gone = False
        if pid is not None:
            try:
                self._fd = os.pidfd_open(pid)
            except ProcessLookupError:
                self._gone = True
            except OSError:  # a kernel without pidfds (< 5.3): cannot tell, go on
                self._fd = None

    def gone(self) -> bool:
        if not self._gone and self._fd is not None:
            poller = select.poll()  # not select(): an engine's fds may be numbered beyond FD_SETSIZE
            poller.register(self._fd, select.POLLIN)
            self._gone = bool(poller.poll(0))
        return self._gone

    def alive(self) -> bool:
        return not self.gone()

    def check(self, doing: str) -> None:
        """Raise :class:`CriuGone` if CRIU exited; ``doing`` says what the hook was doing then."""
        if self.gone():
            raise CriuGone(f"criu (pid {self.pid}) exited while {doing}")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> CriuWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
