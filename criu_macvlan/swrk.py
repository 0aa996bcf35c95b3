"""``criu swrk`` as our child process, and the messages on its socket.

The RPC driver (:mod:`criu_macvlan.rpc`) speaks CRIU's protocol over this; here
is only the process and the SEQPACKET socket: start, watch, send, receive.
"""

from __future__ import annotations

import array
import fcntl
import os
import select
import signal
import socket
from collections.abc import Mapping

from .errors import CriuError

MAX_MSG = 1 << 16  # CRIU's own messages stay below 1 KiB
MAX_FDS = 16


class Swrk:
    """``criu swrk`` as our child, like pycriu's ``_criu_comm_bin`` but started by ``posix_spawn``.

    pycriu forks the calling process, whose page tables the kernel copies: a few
    milliseconds for an engine (or our CLI) with pyroute2, protobuf and pluggy
    loaded, on every request. ``posix_spawn`` uses vfork and costs nothing of the
    kind.
    """

    def __init__(self, path: str, env: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.env = env
        self.sk: socket.socket | None = None
        self.pid = 0
        self.pidfd: int | None = None
        self.ended = ""  # after disconnect: "criu swrk (pid N) was killed by SIGKILL"

    def connect(self, daemon: bool) -> socket.socket:
        """Start ``criu swrk``; our end of its socket. ``daemon`` (pycriu's signature) must be False."""
        if daemon:
            raise ValueError("criu swrk runs as our child here")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        child_fd = -1
        try:
            # criu swrk gets its end as an inherited fd above stdio, and no stdin/stdout/stderr (as with pycriu)
            child_fd = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD, 3)  # inheritable: no FD_CLOEXEC
            self.pid = os.posix_spawn(
                self.path, [self.path, "swrk", str(child_fd)], os.environ if self.env is None else self.env,
                file_actions=[(os.POSIX_SPAWN_CLOSE, fd) for fd in (0, 1, 2)],
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            if child_fd >= 0:
                os.close(child_fd)
        self.sk = ours
        # The socket alone cannot tell that criu died: a task criu forked for the
        # restore inherits its end and keeps it open. Its pidfd can.
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except OSError:  # a kernel without pidfds (< 5.3): the socket alone, as before
            self.pidfd = None
        return ours

    def disconnect(self) -> None:
        if self.sk is not None:
            self.sk.close()
        if self.pid:
            _, status = os.waitpid(self.pid, 0)
            self.ended = f"criu swrk (pid {self.pid}) {how_it_ended(status)}"
            self.pid = 0
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def send(sk: socket.socket, data: bytes) -> bool:
    """Send one message; ``False`` if CRIU is gone."""
    try:
        sk.send(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def how_it_ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"was killed by {signal.Signals(sig).name}"
        except ValueError:  # a real-time signal
            return f"was killed by signal {sig}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _criu_exited(sk: socket.socket, pidfd: int) -> bool:
    """Wait until CRIU says something (``False``) or its process ``pidfd`` exited with nothing left to read."""
    poller = select.poll()
    poller.register(sk, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    ready = {fd for fd, _ in poller.poll()}
    return sk.fileno() not in ready  # a message, or the end of the connection, is read first


def recv(sk: socket.socket, pidfd: int | None = None) -> bytes | None:
    """One CRIU message, or ``None`` at end of connection or when criu's process ``pidfd`` exited.

    fds CRIU passes along are closed.
    """
    if pidfd is not None and _criu_exited(sk, pidfd):
        return None
    fds = array.array("i")
    try:
        data, ancdata, flags, _ = sk.recvmsg(MAX_MSG, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    except ConnectionResetError:
        return None
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
    for fd in fds:
        os.close(fd)  # orphan-pts-master: a pty we do not use
    if not data:
        return None
    if flags & socket.MSG_TRUNC:
        raise CriuError(f"criu sent a message larger than {MAX_MSG} bytes")
    return bytes(data)
