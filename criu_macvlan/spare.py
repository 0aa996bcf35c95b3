"""One request of the helper protocol (``docs/serve.md``): the spare child that takes it from ``req``,
checks it, runs its action for the waiting shim and answers it.

``criu-macvlan serve`` (:mod:`criu_macvlan.serve`) and the per-dump helper
(:mod:`criu_macvlan.warm`) keep one :class:`Spare` forked ahead of the next request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import stat
import sys
from typing import NoReturn

from .action import Later, run_later
from .action import main as run_action
from .proc import parent_of, strings
from .rundir import NO_HELPER_ENV

PER_DUMP_ACTIONS = ("post-dump", "network-unlock")  # what a helper scoped to one CRIU process serves
REHEARSE_AFTER = 20  # ms a new spare waits for a request before it rehearses (see _rehearse)


class Spare:
    """A child forked ahead of the request it serves: it reads ``req`` itself, so that neither our fork
    nor our reading and handing over is on the clock of a waiting shim."""

    def __init__(self, ctl: socket.socket) -> None:
        self.ctl = ctl  # it says here when it has taken a request; closed: it exits unused

    @classmethod
    def fork(cls, req: int, criu_pid: int | None) -> Spare | None:
        """A new spare (serving only CRIU process ``criu_pid``'s actions, if given); ``None`` if the fork fails."""
        ours, its = socket.socketpair()
        stops = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # a stop must never run our handler in the child
        pid = -1
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            its.close()
            return None
        finally:
            if pid != 0:  # the child unblocks them once its handlers are the defaults
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
        if pid == 0:  # pragma: no cover - the forked child (tested end to end)
            ours.close()
            _serve_one(req, its.fileno(), stops, criu_pid)
        its.close()
        return cls(ours)

    def wait(self, timeout: int, stop: int | None = None) -> bool:
        """``True`` once it has taken a request (or died), ``False`` after ``timeout`` ms without or on ``stop``.

        The service then forks the next spare at once: while the shim and CRIU wait for this
        one, not later, when CRIU works again (measured: forking it once this one had exited
        made restores slower).
        """
        try:
            return poll(self.ctl.fileno(), timeout, stop)
        finally:
            self.close()

    def close(self) -> None:
        self.ctl.close()


def poll(fd: int, timeout: int, stop: int | None = None) -> bool:
    """``fd`` is readable within ``timeout`` ms, and ``stop`` (a pidfd) is not."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if stop is not None:
        poller.register(stop, select.POLLIN)
    ready = {f for f, _ in poller.poll(timeout)}
    return fd in ready and stop not in ready


def read_line(req: int) -> bytes:
    """One request line from ``req``, read a byte at a time: the next line is the next child's."""
    line = b""
    with contextlib.suppress(BlockingIOError):  # a line is written whole: nothing more means a stray
        while not line.endswith(b"\n") and len(line) < 256:
            byte = os.read(req, 1)
            if not byte:
                break
            line += byte
    return line


def _request(line: bytes) -> tuple[int, int] | None:
    """``(token, reader)`` of a request line."""
    words = line.split()
    return (int(words[0]), int(words[1])) if len(words) == 2 and all(w.isdigit() for w in words) else None


def refuse(line: bytes) -> None:
    if (request := _request(line)) is not None and (rep := _open_reply(*request)) is not None:
        _answer(rep, "refused")
        os.close(rep)


def _serve_one(req: int, ctl: int, stops: set[signal.Signals], criu_pid: int | None) -> NoReturn:  # pragma: no cover
    """The spare child: take the next request from ``req`` (unless ``ctl`` closes first), run it, exit."""
    code = 1
    try:
        for s in (*stops, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
        poller = select.poll()
        poller.register(req, select.POLLIN)
        poller.register(ctl, select.POLLIN)
        request = None
        if not poller.poll(REHEARSE_AFTER):
            _rehearse()
        while request is None:
            if any(fd == ctl for fd, _ in poller.poll()):
                os._exit(0)  # unused: the service stopped
            request = _request(read_line(req))
        os.write(ctl, b"!")  # the service forks the next spare
        os.close(ctl)
        os.close(req)
        rep = _open_reply(*request)
        later: list[Later] = []
        if rep is None:
            code = 0  # the shim gave up
        else:
            _answer(rep, f"pid {os.getpid()}")  # before any other answer: the shim drops its own write end on it
            try:
                later = handle(rep, request[0], criu_pid)
                code = 0
            except BaseException:
                _answer(rep, "refused")  # the hook runs Python rather than wait
                raise
        run_later(later)  # CRIU goes on meanwhile
    finally:
        sys.stderr.flush()
        os._exit(code)


def _rehearse() -> None:
    """Open a netlink socket and look up one link by name, as the actions do, and drop the service's
    environment (the request's replaces it), before any request.

    A forked child pays for its first touch of the service's memory (copies-on-write,
    cold caches), and a spare that has waited a while pays more: better before the request
    than on CRIU's clock (docs/serve.md). Not at once: a spare is forked while the child
    before it works, and rehearsing beside it slowed that child down.
    """
    from .netlink import Rtnl

    with contextlib.suppress(Exception), Rtnl(None) as host:  # a failure here is the action's to report
        host.link(name="lo")  # by name, as the parents are looked up
    os.environ.clear()


def shim_request(token: int, criu_pid: int | None = None) -> dict[str, str] | None:
    """The environment of the waiting shim ``token``, if its request checks out (its parent owns the images dir).

    With ``criu_pid``: only that CRIU process's ``PER_DUMP_ACTIONS``.
    """
    try:
        items = strings(token, "environ")
    except OSError:
        return None
    ppid = parent_of(token)
    if ppid is None:
        return None
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
    images = env.get("CRTOOLS_IMAGE_DIR", "")
    action = env.get("CRTOOLS_SCRIPT_ACTION", "")
    if not action or not images.startswith(f"/proc/{ppid}/fd/"):
        return None
    if criu_pid is not None and (ppid != criu_pid or action not in PER_DUMP_ACTIONS):
        return None
    return env


def handle(rep: int, token: int, criu_pid: int | None = None) -> list[Later]:
    """In the forked child: run the action of shim ``token`` and answer it on ``rep`` (``refused``: it runs Python);
    what the action left for after the answer (:attr:`.ActionContext.later`), for the caller to run.

    ``criu_pid``: the helper is the one pre-dump left for that CRIU process.
    """
    env = shim_request(token, criu_pid)
    code = None
    later: list[Later] = []
    if env is not None:
        env[NO_HELPER_ENV] = "1"  # pre-dump served here: no per-dump helper, we serve post-dump too
        os.environ.clear()
        os.environ.update(env)
        helper = f"criu-macvlan serve (pid {os.getppid()})" if criu_pid is None else f"warm helper {os.getppid()}"
        code = run_for_hook(token, env, helper, later)
    _answer(rep, "refused" if code is None else str(code))
    return later  # empty unless the action succeeded


def run_for_hook(token: int, env: dict[str, str], helper: str, later: list[Later]) -> int | None:
    """Run ``env``'s action for the waiting hook process ``token``; its exit code.

    The action's messages go to the hook's stderr (CRIU's log, opened ``O_APPEND``
    as CRIU does), as if the hook ran the action itself. ``None`` if that stderr
    cannot be opened (e.g. a socket): the hook then runs the action itself. What
    the hooks leave for after the answer goes to ``later``.
    """
    try:
        err = os.open(f"/proc/{token}/fd/2", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except OSError:
        return None
    os.dup2(err, 2)
    os.close(err)
    try:
        code = run_action(env, later, served=True)
        logging.getLogger("criu_macvlan").debug(
            "%s ran %s: exit code %d", helper, env["CRTOOLS_SCRIPT_ACTION"], code
        )
    finally:
        sys.stderr.flush()
    return code


def _open_reply(token: int, reader: int) -> int | None:
    """The pipe on which the shim ``token`` waits, opened for writing; ``None`` if it is not one.

    ``reader`` must be the shim or a process it started (at most two forks down),
    and its stdin a pipe: the only place an answer is written to.
    """
    pid: int | None = reader
    for _ in range(2):  # the shim itself, its child or its grandchild
        if pid is None or pid == token:
            break
        pid = parent_of(pid)
    if pid != token:
        return None
    try:
        rep = os.open(f"/proc/{reader}/fd/0", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if stat.S_ISFIFO(os.fstat(rep).st_mode):
            return rep
    except OSError:
        pass
    os.close(rep)
    return None


def _answer(rep: int, answer: str) -> None:
    with contextlib.suppress(OSError):  # the shim is gone
        os.write(rep, f"{answer}\n".encode("ascii"))
