"""The object every hook receives."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
from collections.abc import Callable
from typing import Any

from .errors import UsageError


class Mode(enum.Enum):
    """How CRIU reached us."""

    ACTION_SCRIPT = "action-script"  # a new process per action, options from CRIU's argv/config
    RPC = "rpc"  # NOTIFY messages to our RPC driver, hooks run in-process


class ImagesDir:  # plain: the cold path defines no dataclass or NamedTuple (tests/test_cold_imports.py)
    """The CRIU images directory: an open directory fd (use it) and a path (show it).

    ``fd`` is -1 when CRIU no longer holds the directory open (``post-resume``).
    """

    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: str) -> None:
        self.fd, self.path = fd, path

    def __repr__(self) -> str:
        return f"ImagesDir(fd={self.fd}, path={self.path!r})"

    @classmethod
    def open(cls, path: str) -> ImagesDir:
        """Open ``path``; a ``/proc/<pid>/fd/<n>`` path (CRIU's ``CRTOOLS_IMAGE_DIR``) is shown as the real one."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        shown = path
        if path.startswith("/proc/"):
            with contextlib.suppress(OSError):
                shown = os.readlink(f"/proc/self/fd/{fd}")
        return cls(fd=fd, path=shown)

    def close(self) -> None:
        os.close(self.fd)


def open_images(path: str, what: str = "images directory") -> ImagesDir:
    """:meth:`ImagesDir.open` for commands and requests: a directory that cannot be opened is a one-line usage error."""
    try:
        return ImagesDir.open(path)
    except OSError as exc:
        raise UsageError(f"cannot open {what} {path}: {exc.strerror}") from exc


# Plain: the cold path defines no dataclass or NamedTuple (tests/test_cold_imports.py).
# One per action, compared by identity.
class ActionContext:
    """What a hook knows about the CRIU action it handles.

    Attributes:
        action: CRIU's action name (``pre-dump``, ``setup-namespaces``, ...).
        mode: action script or RPC.
        pid: root task of the tree (the dumped one, or the restored one once it
            exists); ``None`` where CRIU does not tell.
        images: the images directory.
        mappings: ``{IN: OUT}`` from ``macvlan[IN]:OUT``.
        externals: every ``--external`` key CRIU was given (``net[INODE]:KEY`` ...).
        empty_ns: ``True`` if the dump/restore uses ``--empty-ns net``, ``False`` if
            not, ``None`` if unknown (then plugins decide from the images).
        announce: the caller's announce setting on restore (RPC driver: CLI flag,
            API keyword), ``None``: the environment or config file decides.
        log: logger for the plugin's messages (CRIU shows an action script's stderr
            in its log).
        state: scratch space that lives as long as one RPC session (in action-script
            mode: one action), for plugins to keep things between hooks.
        criu_pid: the CRIU process the hook works for, where known (the action
            script's CRIU, the driver's ``criu swrk``): a hook doing long work
            while CRIU waits stops when it exits (:mod:`.watch`).
        criu_rpc: an action script run by a CRIU in RPC mode (an engine's): the
            RPC client's options, ``opts.external`` included, are out of its sight.
        later: work a hook leaves for after CRIU has its answer, so that CRIU
            goes on sooner: in action-script mode the process that ran the action
            runs it after answering (or the per-dump helper, before it serves);
            in RPC mode right after the hooks. Each call must keep its own errors
            and leave its result where the action that needs it finds it.
        served: the action runs in a child of a helper (``serve``, the per-dump
            helper) that goes on once CRIU has its answer: ``later`` then never runs
            before the answer, so it may wait for CRIU's next action. A cold hook
            may run ``later`` before it exits, while CRIU waits.
    """

    def __init__(
        self,
        action: str,
        mode: Mode,
        images: ImagesDir,
        pid: int | None = None,
        mappings: dict[str, str] | None = None,
        externals: list[str] | None = None,
        empty_ns: bool | None = None,
        announce: str | bool | None = None,
        log: logging.Logger | None = None,
        state: dict[str, Any] | None = None,
        criu_pid: int | None = None,
        criu_rpc: bool = False,
        later: list[Callable[[], None]] | None = None,
        served: bool = False,
    ) -> None:
        self.action = action
        self.mode = mode
        self.images = images
        self.pid = pid
        self.mappings = {} if mappings is None else mappings
        self.externals = [] if externals is None else externals
        self.empty_ns = empty_ns
        self.announce = announce
        self.log = logging.getLogger("criu_macvlan") if log is None else log
        self.state = {} if state is None else state
        self.criu_pid = criu_pid
        self.criu_rpc = criu_rpc
        self.later = [] if later is None else later
        self.served = served

    def __repr__(self) -> str:
        return f"ActionContext(action={self.action!r}, mode={self.mode}, pid={self.pid}, images={self.images.path!r})"
