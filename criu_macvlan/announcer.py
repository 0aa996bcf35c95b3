"""The processes that send the announcements (see :mod:`.announce` and docs/announce.md).

* RPC mode: the plugin sends the first round in-process (:func:`first_round`); the
  later rounds come from a :class:`Repeater`, a detached process forked while CRIU
  starts, that the ``post-setup-namespaces`` hook only tells which tree and frames.
* Action-script mode: ``setup-namespaces`` leaves an announcer (:func:`arm`) that
  the shell hook wakes at ``post-setup-namespaces`` without waiting; it sends the
  first round, writes its warnings to CRIU's log, says ``done`` to a ``pre-resume``
  hook that waits for it, and sends the later rounds itself.

Detached processes hold a pidfd of the restored tree, never an fd of the images
directory or of CRIU (the announcer holds CRIU's log only until its first round is
out), and nothing of the restored netns between rounds.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import socket
import threading
import time

from .action import Later
from .announce import LinkFrames, Schedule, packet_socket, read_links, send_round, summary, warning
from .errors import HOOK_PROG, CriuMacvlanError, printable
from .netns import open_of_pid
from .proc import detach_fds
from .rundir import RUN_DIR, announce_dir, private_dir, remove_tree, sweep, write_pid

WAIT_FOR_GO = 600.0  # seconds a waiting process waits to be told to go


def _detach(keep: list[int]) -> list[int] | None:
    """Double fork: in the detached grandchild (own session, stdio on /dev/null, no fd but
    ``keep``), ``keep``'s fds there; ``None`` in the caller once the intermediate child was reaped."""
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return None
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        return detach_fds(keep)
    except BaseException:
        os._exit(1)


def _netns_of(pid: int, pidfd: int) -> int | None:
    """An fd of the netns of process ``pid``; ``None`` once it exited (``pidfd`` says so, and a
    recycled pid is never entered)."""
    try:
        ns = open_of_pid(pid)
    except CriuMacvlanError:
        return None
    if select.select([pidfd], [], [], 0)[0]:
        os.close(ns)
        return None
    return ns


def _socket_in(pid: int, pidfd: int) -> socket.socket | None:
    """A packet socket in the netns of process ``pid`` (``None`` once it exited). The process
    stays in its own netns."""
    from .netlink import entered

    ns = _netns_of(pid, pidfd)
    if ns is None:
        return None
    try:
        with entered(ns):
            return packet_socket()
    finally:
        os.close(ns)


def first_round(pid: int, pidfd: int, indexes: list[int], known: list[LinkFrames] | None = None
                ) -> tuple[list[LinkFrames], dict[str, str], socket.socket | None]:
    """Send the frames of the links ``indexes`` of the netns of ``pid`` once: ``known``, or
    built from the links' addresses now. The links, each failed link's error, and the socket:
    the caller closes it when it no longer waits (closing a packet socket waits for an RCU
    grace period, milliseconds)."""
    from .netlink import entered

    ns = _netns_of(pid, pidfd)
    if ns is None:
        return [], {}, None
    try:
        with entered(ns):  # once, for the socket and, if needed, the links' addresses
            sock = packet_socket()
            try:
                links = known if known is not None else read_links(indexes)
            except BaseException:
                sock.close()
                raise
    finally:
        os.close(ns)
    try:
        return links, send_round(sock, links), sock
    except BaseException:
        sock.close()
        raise


def close_later(sock: socket.socket | None) -> None:
    """Close ``sock`` in a thread of its own: nobody waits for the grace period."""
    if sock is not None:
        threading.Thread(target=sock.close, name="criu-macvlan-announce-close", daemon=True).start()


def _repeat(pid: int, pidfd: int, links: list[LinkFrames], schedule: Schedule) -> None:
    # Between rounds nothing of the netns is held: a tree killed meanwhile takes its
    # netns and links with it at once (a restore onto the same parent may follow).
    for delay in schedule.delays():
        if select.select([pidfd], [], [], delay)[0]:
            return  # the tree exited
        sock = _socket_in(pid, pidfd)
        if sock is None:
            return
        with sock:
            if len(send_round(sock, links)) == len(links):
                return  # every link is gone


def repeat_detached(pid: int, links: list[LinkFrames], schedule: Schedule) -> None:
    """Send the rounds after the first from a detached process that holds only a pidfd of ``pid``."""
    if schedule.rounds < 2 or not links:
        return
    pidfd = os.pidfd_open(pid)
    try:
        if (kept := _detach([pidfd])) is not None:  # pragma: no cover - the detached process (tested end to end)
            try:
                _repeat(pid, kept[0], links, schedule)
            finally:
                os._exit(0)
    finally:
        os.close(pidfd)


class Repeater:
    """RPC mode: the detached process of the later rounds, forked ahead (while CRIU starts), so that
    ``post-setup-namespaces`` only writes to a pipe. It waits for :meth:`go` (the tree and the
    frames), or for the pipe's end (a failed restore: nothing to do), at most :data:`WAIT_FOR_GO`."""

    def __init__(self, schedule: Schedule) -> None:
        rd, self._wr = os.pipe()
        try:
            if (kept := _detach([rd])) is not None:  # pragma: no cover - the detached process (tested end to end)
                try:
                    _wait_and_repeat(kept[0], schedule)
                finally:
                    os._exit(0)
        finally:
            os.close(rd)

    def go(self, pid: int, links: list[LinkFrames]) -> None:
        lines = [str(pid), *(f"{link.name} {' '.join(f.hex() for f in link.frames)}" for link in links)]
        try:
            with open(self._wr, "w", encoding="utf-8", closefd=False) as f:
                f.write("\n".join(lines) + "\n")
        finally:
            self.close()

    def close(self) -> None:
        if self._wr >= 0:
            os.close(self._wr)
            self._wr = -1

    def __del__(self) -> None:  # a restore that failed before post-setup-namespaces: the process goes
        self.close()


def _wait_and_repeat(rd: int, schedule: Schedule) -> None:
    data = b""
    deadline = time.monotonic() + WAIT_FOR_GO
    while select.select([rd], [], [], max(0.0, deadline - time.monotonic()))[0]:
        chunk = os.read(rd, 1 << 16)
        if not chunk:
            break
        data += chunk
    lines = data.decode("ascii", "replace").splitlines()
    if not lines or not lines[0].isdigit():
        return
    links = [LinkFrames(name, [bytes.fromhex(f) for f in frames.split()], "")
             for name, _, frames in (line.partition(" ") for line in lines[1:])]
    pid = int(lines[0])
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    _repeat(pid, pidfd, links, schedule)


def arm(criu_pid: int, pid: int, indexes: list[int], schedule: Schedule, known: list[LinkFrames] | None,
        later: list[Later], served: bool = False) -> bool:
    """Action-script mode: leave an announcer for ``post-setup-namespaces`` of CRIU
    ``criu_pid`` restoring the tree of ``pid`` (the shim wakes it, see
    ``hooks/criu-macvlan-action``). ``False`` if there can be none.

    The announcer starts from ``later``, once the action has nothing left to do but answer:
    a ``served`` child (which goes on after CRIU has its answer) becomes it then, so no fork
    is on CRIU's clock; a cold hook forks it last, just before it exits, so that nothing of
    the action runs in a parent whose pages the fork has made copy-on-write. Either way its
    runtime dir, FIFOs and pid are there before the answer: a ``go`` written before it
    listens waits in the FIFO.
    """
    path = announce_dir(criu_pid)
    fds: list[int] = []
    dir_fd = -1
    try:
        fds += [os.pidfd_open(criu_pid), os.pidfd_open(pid)]
        os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
        remove_tree(path)  # a dead announcer's of a recycled pid
        dir_fd = private_dir(path, make=True)
        for name in ("go", "done"):
            os.mkfifo(name, 0o600, dir_fd=dir_fd)
            fds.append(os.open(name, os.O_RDWR | os.O_CLOEXEC, dir_fd=dir_fd))
        fds.append(_log_fd())
        if served:
            write_pid(dir_fd)
            later.append(functools.partial(_become, path, schedule, pid, indexes, known, fds))
        else:
            later.append(functools.partial(_fork, path, schedule, pid, indexes, known, fds, dir_fd))
            dir_fd = -1  # the fork's now
        fds = []  # the announcer's now
    except OSError:
        remove_tree(path)
        return False
    finally:
        for fd in fds:
            os.close(fd)
        if dir_fd >= 0:
            os.close(dir_fd)
    return True


def _fork(path: str, schedule: Schedule, pid: int, indexes: list[int], known: list[LinkFrames] | None,
          fds: list[int], dir_fd: int) -> None:
    """A cold hook's last step: fork the announcer (:func:`_become`) and write its pid. One fork:
    the hook exits next, so its child is re-parented, and no intermediate process is forked and
    waited for while CRIU waits."""
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - the detached process
            try:
                _become(path, schedule, pid, indexes, known, fds)
            finally:
                os._exit(0)
        write_pid(dir_fd, child)
    except OSError as exc:
        remove_tree(path)
        logging.getLogger("criu_macvlan").warning(
            "%s", warning("the restored links", f"cannot start the announcer: {exc.strerror or exc}"))
    finally:
        for fd in [*fds, dir_fd]:
            os.close(fd)


def _become(path: str, schedule: Schedule, pid: int, indexes: list[int], known: list[LinkFrames] | None,
            fds: list[int]) -> None:  # pragma: no cover - the announcer's process (tested end to end)
    """This process becomes the announcer (a served child after its answer, or the cold hook's fork):
    in a session of its own, with no fd but ``fds``; then it removes its dir, and any stale one."""
    try:
        with contextlib.suppress(OSError):  # a group leader cannot: it then stays in the service's session
            os.setsid()
        _announcer(path, schedule, pid, indexes, known, *detach_fds(fds))
    finally:
        remove_tree(path)
        sweep()  # the announce dir of an action that failed after it armed one


def _log_fd() -> int:
    """Our stderr, CRIU's log when CRIU runs the action (the served child's is the hook's): the
    announcer reports there itself, so that no hook need wait for it; else ``/dev/null``."""
    try:
        return os.dup(2)
    except OSError:
        return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


def _announcer(path: str, schedule: Schedule, pid: int, indexes: list[int], known: list[LinkFrames] | None,
               criu: int, tree: int, go: int, done: int, log: int) -> None:
    """Wait for the shim's ``go`` (or CRIU's end: then nothing to do), send the first round,
    write each link's failure to ``log``, say ``done`` to a shim that waits (``pre-resume``),
    then send the other rounds."""
    try:
        ready, _, _ = select.select([go, criu], [], [], WAIT_FOR_GO)
        if go not in ready:
            return
        links, sock = _first_round_reported(pid, tree, indexes, known, schedule, log)
    finally:
        os.close(log)  # CRIU's log is its own again: it may be in the images dir
    # Gone before anyone hears "done": a later delivery (runc's CRIU runs every script twice)
    # then finds no announcer to wake or wait for.
    remove_tree(path)
    os.write(done, b"done\n")
    if sock is not None:
        sock.close()  # sent: the tasks may resume
    if links:
        _repeat(pid, tree, links, schedule)


def _first_round_reported(pid: int, tree: int, indexes: list[int], known: list[LinkFrames] | None,
                          schedule: Schedule, log: int) -> tuple[list[LinkFrames], socket.socket | None]:
    """The first round, its failures written to ``log`` as the hook writes its lines."""
    sock = None
    try:
        links, errors, sock = first_round(pid, tree, indexes, known)
        lines = [warning(name, err) for name, err in errors.items()]
        if os.environ.get("CRIU_MACVLAN_DEBUG", "") not in ("", "0"):
            lines.append(f"announced {summary(links)}; {len(schedule.delays())} more round(s) from pid {os.getpid()}")
    except Exception as exc:  # never fail the restore: one line, no repeats
        links, lines = [], [warning("the restored links", str(exc))]
    if lines:
        with contextlib.suppress(OSError):
            os.write(log, "".join(f"{HOOK_PROG}: {printable(line)}\n" for line in lines).encode("utf-8", "replace"))
    return links, sock
