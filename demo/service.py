"""The demo's service (``examples/echo_service.py`` as pid 1 of its own namespaces) and its client."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from devtools.tree import start_tree

from .topology import PORT, SERVICE_IP
from .ui import DemoError

SERVICE = Path(__file__).resolve().parents[1] / "examples" / "echo_service.py"
INTERVAL = 0.01  # pause between the client's messages
REPLY_TIMEOUT = 20.0  # the longest the client waits for one reply
POLL = 0.2  # the client's socket timeout: it retries on the same socket


def start_service(python: str) -> tuple[subprocess.Popen[bytes], int]:
    """The echo service as pid 1 of a new pid+net namespace; returns (the unshare process, its pid)."""
    if not SERVICE.exists():
        raise DemoError(f"{SERVICE} is missing: run the demo from a criu-macvlan checkout")
    try:
        return start_tree(python, "-I", str(SERVICE), "--port", str(PORT))
    except RuntimeError:
        raise DemoError("the service did not start") from None


def gone(pid: int) -> bool:
    """True once ``pid`` is dead (a zombie child of ours is reaped on the way)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def kill_and_wait(pid: int, timeout: float = 5.0) -> None:
    """SIGKILL a process tree root we started (or restored) and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


# ------------------------------------------------------------------ client


@dataclass
class Reply:
    n: int
    count: int
    total: int
    sent: float
    received: float


class Client(threading.Thread):
    """Sends ``1, 2, 3, ...`` over ONE connection and checks every reply.

    A reply that is late (the service is frozen or moving) is waited for on the
    same socket: TCP retransmits the message, the client never reconnects and
    never sends a message twice.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(name="demo-client", daemon=True)
        self.sock = sock
        self.replies: list[Reply] = []
        self.error: str | None = None
        self.waits = 0  # socket timeouts survived while waiting for a reply
        self.stopping = threading.Event()
        self._buf = b""

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self._buf:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                self.waits += 1
                if time.monotonic() > deadline:
                    raise DemoError(f"no reply for {REPLY_TIMEOUT:.0f} s") from None
                continue
            if not data:
                raise DemoError("the service closed the connection")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def run(self) -> None:
        self.sock.settimeout(POLL)
        n = 0
        try:
            while not self.stopping.is_set():
                n += 1
                sent = time.monotonic()
                self.sock.sendall(f"{n}\n".encode())
                got_n, count, total = (int(f) for f in self._line(sent + REPLY_TIMEOUT).split())
                got = Reply(got_n, count, total, sent=sent, received=time.monotonic())
                if (got.n, got.count, got.total) != (n, n, n * (n + 1) // 2):
                    raise DemoError(f"message {n}: reply {got.n} {got.count} {got.total}, "
                                    f"expected {n} {n} {n * (n + 1) // 2}")
                self.replies.append(got)
                time.sleep(INTERVAL)
            self.sock.shutdown(socket.SHUT_WR)  # the service sees EOF and exits
        except (DemoError, OSError, ValueError, TypeError) as exc:
            self.error = str(exc) or type(exc).__name__

    def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.replies) < count:
            if self.error is not None:
                raise DemoError(f"client: {self.error}")
            if time.monotonic() > deadline:
                raise DemoError(f"client: only {len(self.replies)} of {count} replies after {timeout:.0f} s")
            time.sleep(0.01)


def connect(client_fd: int) -> socket.socket:
    """A TCP connection from the client's netns to the service (retried until it listens)."""
    from criu_macvlan import netlink as nl

    deadline = time.monotonic() + 10
    while True:
        with nl.entered(client_fd):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(1.0)
        try:
            sock.connect((SERVICE_IP, PORT))
            return sock
        except OSError as exc:
            sock.close()
            if time.monotonic() > deadline:
                raise DemoError(f"cannot connect to the service: {exc.strerror or exc}") from exc
            time.sleep(0.05)


def wait_exit(pid: int, timeout: float = 5.0) -> None:
    """The restored service exits by itself once the client hangs up."""
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            raise DemoError(f"the restored service (pid {pid}) did not exit after the client hung up")
        time.sleep(0.01)
