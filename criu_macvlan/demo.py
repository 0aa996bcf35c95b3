"""The live-migration demo: ``python -m criu_macvlan.demo`` (``make demo``), as root.

Two simulated hosts on one machine: a switch (a bridge in a network namespace
of its own) with host A's NIC, host B's NIC (veths whose peers are switch ports)
and a client (its own netns, a third port). ``examples/echo_service.py`` runs as
pid 1 of its own pid+net namespace with a macvlan on host A's NIC; the client
keeps one TCP connection to it and exchanges numbered messages. The demo
checkpoints the service with criu-macvlan, restores it onto host B's NIC and
checks that the same connection goes on with nothing lost or repeated.

Everything it makes is removed at the end, on failure and on SIGINT/SIGTERM;
the switch and client namespaces are held only by file descriptors, so even a
killed demo leaves no link behind. The last line is ``demo: SUCCESS ...`` or
``demo: FAILED: ...``; exit status 0 only on success.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

from . import announce, images, rpc
from . import macvlan_pb2 as pb
from . import netns as nsutil
from .errors import CriuError, CriuMacvlanError

CLONE_NEWNET = 0x40000000
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SERVICE = EXAMPLES / "echo_service.py"
PORT = 7000
SERVICE_MAC = "02:c0:ff:ee:00:02"
SERVICE_IP = "10.99.0.2"
CLIENT_IP = "10.99.0.1"
PREFIX = 24
IFNAME = "eth0"  # the service's macvlan, inside its netns
WARMUP = 25  # replies before the checkpoint
AFTER = 25  # replies after the restore
INTERVAL = 0.01  # pause between the client's messages
REPLY_TIMEOUT = 20.0  # the longest the client waits for one reply
POLL = 0.2  # the client's socket timeout: it retries on the same socket


class DemoError(Exception):
    """A step of the demo failed: one line for the user."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM: stop, clean up, fail."""


def say(text: str) -> None:
    """One line in a single write: a signal handler (SIGINT/SIGTERM) can't split it."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def step(text: str) -> None:
    say(text)


def detail(text: str) -> None:
    say(f"      {text}")


# ------------------------------------------------------------------ the lab


def _libc_ns_call(name: str, *args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def new_netns() -> int:
    """A new, anonymous network namespace, held by the returned fd alone."""
    home = nsutil.open_own()
    try:
        if hasattr(os, "unshare"):
            os.unshare(CLONE_NEWNET)
        else:  # Python < 3.12
            _libc_ns_call("unshare", CLONE_NEWNET)
        try:
            return nsutil.open_own()
        finally:
            if hasattr(os, "setns"):
                os.setns(home, CLONE_NEWNET)
            else:
                _libc_ns_call("setns", home, CLONE_NEWNET)
    finally:
        os.close(home)


@dataclass
class Lab:
    """Host A's NIC, host B's NIC and the client, on one switch."""

    nic_a: str
    nic_b: str
    switch_fd: int = -1
    client_fd: int = -1

    def build(self) -> None:
        from . import netlink as nl
        from .netlink import topology

        self.switch_fd = new_netns()
        self.client_fd = new_netns()
        root = nsutil.open_own()
        try:
            with nl.Rtnl(self.switch_fd) as sw:
                topology.add_bridge(sw, "switch")
                topology.add_veth(sw, "port-a", self.nic_a, root)
                topology.add_veth(sw, "port-b", self.nic_b, root)
                topology.add_veth(sw, "port-client", "eth0", self.client_fd)
                for port in ("port-a", "port-b", "port-client"):
                    topology.set_master(sw, port, "switch")
                    sw.set_up(topology.index_of(sw, port))
                sw.set_up(topology.index_of(sw, "switch"))
        finally:
            os.close(root)
        with nl.Rtnl(None) as host:
            for nic in (self.nic_a, self.nic_b):
                host.set_up(topology.index_of(host, nic))
        with nl.Rtnl(self.client_fd) as client:
            index = topology.index_of(client, "eth0")
            client.set_up(index)
            client.add_address(index, _addr(CLIENT_IP))

    def switch_port_of(self, mac: str) -> str | None:
        """The switch port its FDB sends ``mac`` to."""
        from . import netlink as nl
        from .netlink import topology

        with nl.Rtnl(self.switch_fd) as sw:
            index = topology.fdb_port(sw, mac)
            msg = sw.link(index=index) if index is not None else None
        return None if msg is None else str(msg.get_attr("IFLA_IFNAME"))

    def nic_index(self, name: str) -> int:
        from . import netlink as nl
        from .netlink import topology

        with nl.Rtnl(None) as host:
            return topology.index_of(host, name)

    def teardown(self) -> None:
        from . import netlink as nl

        with nl.Rtnl(None) as host:
            for nic in (self.nic_a, self.nic_b):
                msg = host.link(name=nic)
                if msg is not None and nl.link_kind(msg) == "veth":
                    host.delete_link(int(msg["index"]))
        for fd in (self.client_fd, self.switch_fd):
            if fd >= 0:
                os.close(fd)
        self.client_fd = self.switch_fd = -1


def _addr(ip: str) -> pb.macvlan_addr:
    return pb.macvlan_addr(family=socket.AF_INET, address=socket.inet_aton(ip), prefixlen=PREFIX)


def quiet_ipv6() -> None:
    """Disable IPv6 in the current netns (the service's; it is IPv4 only).

    Otherwise the restored NIC speaks up as soon as CRIU sets it up (IPv6 DAD and
    MLD) and the switch moves the MAC to host B's port early. CRIU restores the
    addresses before the iptables rules that lock the connection (criu/net.c,
    prepare_net_ns_second_stage), so a client retransmission arriving in that
    window finds the address but no socket and no lock, and is answered with a
    RST. Kept quiet, the MAC moves when the plugin announces it (docs/announce.md):
    at post-setup-namespaces, with the connection locked.
    """
    for conf in ("all", "default"):
        with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w", encoding="ascii") as f:
            f.write("1")


def give_service_a_nic(pid: int, parent: str, ifindex: int = 0) -> None:
    """A macvlan on ``parent`` inside the service's netns: fixed MAC and IP, default route via the client.

    ``ifindex`` 0: the kernel's choice (2, as in a container); native CRIU needs one free on the host.
    """
    from . import netlink as nl
    from .netlink import topology

    target = nsutil.open_of_pid(pid)
    try:
        with nl.entered(target):  # IPv4 only: see quiet_ipv6()
            quiet_ipv6()
        link = pb.macvlan_link(
            name=IFNAME, ifindex=ifindex, mode=4, address=nl.mac_to_bytes(SERVICE_MAC), mtu=1500, link_flags=0
        )
        with nl.Rtnl(None) as host:
            host.create_macvlan(link, topology.index_of(host, parent), target)
        with nl.Rtnl(target) as inside:
            index = topology.index_of(inside, IFNAME)
            inside.set_up(index)
            inside.add_address(index, _addr(SERVICE_IP))
            default = pb.macvlan_route(
                family=socket.AF_INET, dst_len=0, gateway=socket.inet_aton(CLIENT_IP), table=254, protocol=3
            )
            inside.add_route(index, default)
    finally:
        os.close(target)


def service_nic(pid: int) -> pb.macvlan_link:
    """The service's macvlan as the kernel sees it now (MAC, addresses, routes, parent)."""
    from . import netlink as nl

    target = nsutil.open_of_pid(pid)
    own = nsutil.open_own()
    try:
        links = nl.read_macvlans(target, own)
    finally:
        os.close(target)
        os.close(own)
    found = [link for link in links if link.name == IFNAME]
    if not found:
        raise DemoError(f"process {pid} has no macvlan {IFNAME}")
    return found[0]


# -------------------------------------------------------------- processes


def start_service(python: str) -> tuple[subprocess.Popen[bytes], int]:
    """The echo service as pid 1 of a new pid+net namespace; returns (the unshare process, its pid)."""
    if not SERVICE.exists():
        raise DemoError(f"{SERVICE} is missing: run the demo from a criu-macvlan checkout")
    proc = subprocess.Popen(
        ["unshare", "--pid", "--net", "--fork", "setsid", python, "-I", str(SERVICE), "--port", str(PORT)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = children.read_text().split() if children.exists() else []
        if kids:
            pid = int(kids[0])
            with contextlib.suppress(OSError):
                while Path(f"/proc/{pid}/comm").read_text().strip() in ("unshare", "setsid"):
                    time.sleep(0.005)
            return proc, pid
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    raise DemoError("the service did not start")


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
    from . import netlink as nl

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


# -------------------------------------------------------------------- criu


@dataclass
class Criu:
    """How the demo runs CRIU.

    ``dump(pid, dir)``; ``restore(dir, mappings) -> pid``. The plugin announces the
    restored MAC itself (docs/announce.md), before the service resumes.
    """

    name: str
    dump: Callable[[int, Path], None]
    restore: Callable[[Path, dict[str, str]], int]


def action_script() -> str:
    """The installed ``criu-macvlan-action`` next to this Python, else the checkout's."""
    installed = Path(sys.prefix) / "bin" / "criu-macvlan-action"
    if installed.exists():
        return str(installed)
    return str(Path(__file__).resolve().parents[1] / "hooks" / "criu-macvlan-action")


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join(f"      | {line}" for line in tail)


COMPAT_SRC = Path(__file__).resolve().parents[1] / "scripts" / "criu-sockopt-compat.c"


def criu_version(criu_bin: str) -> tuple[int, ...]:
    res = subprocess.run([criu_bin, "--version"], capture_output=True, text=True, check=False)
    for line in res.stdout.splitlines():
        if line.startswith("Version:"):
            return tuple(int(p) for p in line.split()[1].split(".") if p.isdigit())
    return ()


def kernel_refuses_passcred() -> bool:
    """Linux >= 6.16: SO_PASSCRED on an INET socket is EOPNOTSUPP (criu 4.1 cannot dump it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED)
        except OSError:
            return True
    return False


def criu_compat_env(criu_bin: str, workdir: Path) -> dict[str, str]:
    """Environment criu needs on this box: ``LD_PRELOAD`` of scripts/criu-sockopt-compat.c, or nothing."""
    version = criu_version(criu_bin)
    if version >= (4, 2) or not kernel_refuses_passcred():
        return {}
    shown = ".".join(map(str, version)) or "?"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not COMPAT_SRC.exists():
        raise DemoError(f"criu {shown} cannot dump TCP sockets on Linux {os.uname().release} (fixed in criu 4.2); "
                        "install criu >= 4.2, or a C compiler for the compat shim")
    lib = workdir / "criu-sockopt-compat.so"
    res = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(COMPAT_SRC), "-ldl"],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise DemoError(f"cannot build the criu compat shim: {res.stderr.strip().splitlines()[-1:]}")
    detail(f"criu {shown} cannot dump TCP sockets on Linux {os.uname().release} (fixed in criu 4.2): "
           f"running it with LD_PRELOAD={lib.name}")
    return {"LD_PRELOAD": str(lib)}


def criu_cli(criu_bin: str, env: dict[str, str]) -> Criu:
    """Plain ``criu`` with ``--action-script criu-macvlan-action``."""
    script = action_script()

    def run(args: list[str], images_dir: Path, log: str) -> None:
        cmd = [criu_bin, *args, "-D", str(images_dir), "-v4", "-o", log, "--tcp-established",
               "--action-script", script]
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
                             env={**os.environ, **env})
        if res.returncode != 0:
            say(_log_tail(images_dir / log))
            raise DemoError(f"criu {args[0]} failed (exit {res.returncode}), see {images_dir / log}")

    def dump(pid: int, images_dir: Path) -> None:
        run(["dump", "-t", str(pid)], images_dir, "dump.log")

    def restore(images_dir: Path, mappings: dict[str, str]) -> int:
        pidfile = images_dir / "restored.pid"
        externals = [f"--external=macvlan[{k}]:{v}" for k, v in mappings.items()]
        run(["restore", "-d", "--pidfile", str(pidfile), *externals], images_dir, "restore.log")
        return int(pidfile.read_text())

    return Criu("cli", dump, restore)


def criu_native(criu_bin: str, env: dict[str, str]) -> Criu:
    """Plain ``criu`` without criu-macvlan: CRIU dumps and restores the macvlan itself (``--compare``)."""

    def run(args: list[str], images_dir: Path, log: str) -> None:
        cmd = [criu_bin, *args, "-D", str(images_dir), "-v4", "-o", log, "--tcp-established"]
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
                             env={**os.environ, **env})
        if res.returncode != 0:
            say(_log_tail(images_dir / log))
            raise DemoError(f"criu {args[0]} failed (exit {res.returncode}), see {images_dir / log}")

    def dump(pid: int, images_dir: Path) -> None:
        run(["dump", "-t", str(pid)], images_dir, "dump.log")

    def restore(images_dir: Path, mappings: dict[str, str]) -> int:
        pidfile = images_dir / "restored.pid"
        externals = [f"--external=macvlan[{k}]:{v}" for k, v in mappings.items()]
        run(["restore", "-d", "--pidfile", str(pidfile), *externals], images_dir, "restore.log")
        return int(pidfile.read_text())

    return Criu("native", dump, restore)


def criu_rpc(criu_bin: str, env: dict[str, str]) -> Criu:
    """criu-macvlan's RPC driver: CRIU's notifications run the plugin hooks in this process."""
    driver = rpc.Criu(criu_bin=criu_bin, env={**os.environ, **env})

    def dump(pid: int, images_dir: Path) -> None:
        driver.dump(pid, str(images_dir), tcp_established=True, log_file="dump.log", log_level=4)

    def restore(images_dir: Path, mappings: dict[str, str]) -> int:
        return driver.restore(str(images_dir), mappings, tcp_established=True, log_file="restore.log", log_level=4)

    return Criu("rpc", dump, restore)


def criu_stats(images_dir: Path, kind: str) -> dict[str, int]:
    """CRIU's own timings (stats-dump.img / stats-restore.img), in microseconds."""
    try:
        import pycriu.images

        with open(images_dir / f"stats-{kind}", "rb") as f:
            entry: dict[str, int] = pycriu.images.load(f)["entries"][0][kind]
        return entry
    except (OSError, ImportError, KeyError, IndexError):
        return {}


# -------------------------------------------------------- show and check


def show(images_dir: Path) -> list[pb.macvlan_link]:
    """The sidecar CRIU's post-dump hook wrote, as ``criu-macvlan show`` prints it."""
    from .render import table

    fd = os.open(images_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sidecar = images.load(fd)
    finally:
        os.close(fd)
    if sidecar is None:
        raise DemoError(f"the dump wrote no {images.SIDECAR}: the action script did not run")
    for line in table(sidecar).splitlines():
        detail(line)
    return list(sidecar.links)


def check(images_dir: Path, mappings: dict[str, str]) -> None:
    """``criu-macvlan check``: would a restore with ``mappings`` work on this host?"""
    from .preflight import check as preflight

    report = preflight(str(images_dir), mappings)
    for warning in report.warnings:
        detail(f"check: warning: {warning}")
    if report.problems:
        raise DemoError("check: " + "; ".join(report.problems))
    targets = ", ".join(f"{name} -> {parent}" for name, parent in mappings.items())
    detail(f"check: ok: {report.links} macvlan link(s) can be restored here ({targets})")


# -------------------------------------------------------------------- run


@dataclass
class Report:
    path: str
    nic_a: str = ""
    nic_b: str = ""
    pids: list[int] = field(default_factory=list)
    replies: list[list[float]] = field(default_factory=list)  # n, count, total, sent, received
    migrated_after: int = 0  # the number of the last reply before the checkpoint
    freeze_ms: float = 0.0
    dump_ms: float = 0.0
    restore_ms: float = 0.0
    downtime_ms: float = 0.0
    moved_at_restore: bool = False  # the switch sent the MAC to host B's port when the restore returned
    ifindex: int = 0  # of the service's macvlan (0: the kernel's choice)
    workdir: str = ""  # images, logs, the compat shim; removed unless --keep
    images_dir: str = ""  # set when kept
    error: str = ""


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP raise :class:`Interrupted` in the main thread while the demo runs.

    After the first one, further signals are ignored: a second Ctrl-C must not cut
    the clean-up short (every clean-up step runs even if one is interrupted).
    """
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def handler(signum: int, frame: FrameType | None) -> None:
        for s in sigs:
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run(report: Report, criu_bin: str, keep: bool, python: str) -> None:
    tag = f"{os.getpid() % 100000:05d}"
    lab = Lab(nic_a=f"dmA{tag}", nic_b=f"dmB{tag}")
    report.nic_a, report.nic_b = lab.nic_a, lab.nic_b
    cleanup = contextlib.ExitStack()
    with cleanup:
        workdir = Path(tempfile.mkdtemp(prefix="criu-macvlan-demo."))
        report.workdir = str(workdir)
        if keep:
            report.images_dir = str(workdir)
        else:
            cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        cleanup.callback(lab.teardown)
        env = criu_compat_env(criu_bin, workdir)
        criu = {"rpc": criu_rpc, "cli": criu_cli, "native": criu_native}[report.path](criu_bin, env)
        native = criu.name == "native"

        step(f"[1/6] two hosts on one switch: host A's NIC {lab.nic_a}, host B's NIC {lab.nic_b}, "
             f"client {CLIENT_IP} (switch and client in namespaces of their own)")
        lab.build()

        proc, pid = start_service(python)
        report.pids.append(pid)
        cleanup.callback(proc.wait)
        cleanup.callback(kill_and_wait, pid)
        give_service_a_nic(pid, lab.nic_a, report.ifindex)
        before = service_nic(pid)
        step(f"[2/6] service {SERVICE.name}: pid {pid} in its own pid+net namespace, "
             f"{IFNAME} {SERVICE_MAC} {SERVICE_IP}/{PREFIX}, macvlan on {before.parent.name} "
             f"(ifindex {before.parent.ifindex})")

        sock = connect(lab.client_fd)
        cleanup.callback(sock.close)
        client = Client(sock)
        client.start()
        cleanup.callback(client.join, 5)
        cleanup.callback(client.stopping.set)
        client.wait_for(WARMUP, 10)
        step(f"[3/6] client: one TCP connection {CLIENT_IP} -> {SERVICE_IP}:{PORT}, "
             f"{len(client.replies)} numbered messages answered so far")

        images_dir = workdir / "images"
        images_dir.mkdir()
        step(f"[4/6] checkpoint ({criu.name}): criu dump --tcp-established"
             f"{' (native CRIU, no criu-macvlan)' if native else ' with criu-macvlan'}")
        t0 = time.monotonic()
        last_before = len(client.replies)
        criu.dump(pid, images_dir)
        report.dump_ms = _ms(time.monotonic() - t0)
        report.migrated_after = last_before
        stats = criu_stats(images_dir, "dump")
        report.freeze_ms = round(stats.get("frozen_time", 0) / 1000, 1)
        detail(f"dumped in {report.dump_ms} ms; the service was frozen for {report.freeze_ms} ms; "
               f"pid {pid} is {'gone' if gone(pid) else 'STILL RUNNING'}")
        if not native:
            show(images_dir)

        mappings = {IFNAME: lab.nic_b}
        step(f"[5/6] restore on host B: macvlan[{IFNAME}]:{lab.nic_b}")
        if not native:
            check(images_dir, mappings)
        old_port = lab.switch_port_of(SERVICE_MAC)
        t0 = time.monotonic()
        new_pid = criu.restore(images_dir, mappings)
        report.restore_ms = _ms(time.monotonic() - t0)
        report.pids.append(new_pid)
        cleanup.callback(kill_and_wait, new_pid)
        detail(f"restored as pid {new_pid} in {report.restore_ms} ms")
        port = lab.switch_port_of(SERVICE_MAC)
        report.moved_at_restore = port == "port-b"
        if native:
            detail(f"the switch sends {SERVICE_MAC} to {port or 'no port'} (native CRIU announces nothing)")
        elif port != "port-b":
            raise DemoError(f"the switch still sends {SERVICE_MAC} to {port or 'no port'}: the MAC was not announced")
        else:
            schedule = announce.configured(None, os.environ) or announce.DEFAULT
            detail(f"the switch's FDB moved {SERVICE_MAC} from {old_port} to {port}: criu-macvlan announced it "
                   f"before the service resumed (gratuitous ARP at post-setup-namespaces, then "
                   f"{schedule.rounds - 1} more rounds; docs/announce.md)")
        after = service_nic(new_pid)
        verify(after, before, lab.nic_index(lab.nic_b), lab.nic_b)

        client.wait_for(last_before + AFTER, REPLY_TIMEOUT + 10)
        client.stopping.set()
        client.join(REPLY_TIMEOUT + 5)
        if client.error is not None:
            raise DemoError(f"client: {client.error}")
        report.replies = [[r.n, r.count, r.total, r.sent, r.received] for r in client.replies]
        report.downtime_ms = _ms(max(r.received - r.sent for r in client.replies))
        n = len(client.replies)
        step(f"[6/6] the same connection went on: messages 1..{n} answered in order, none lost or repeated, "
             f"service state kept (count {client.replies[-1].count}, total {client.replies[-1].total}); "
             f"the client waited {client.waits}x on its socket for a late reply, never reconnected")
        detail(f"the client's longest wait for a reply: {report.downtime_ms} ms (the service's downtime, "
               "rounded up to the client's next TCP retransmission)")
        wait_exit(new_pid)


def verify(after: pb.macvlan_link, before: pb.macvlan_link, b_index: int, nic_b: str) -> None:
    from .netlink import mac_to_str

    def addrs(link: pb.macvlan_link) -> set[tuple[bytes, int]]:
        return {(a.address, a.prefixlen) for a in link.addrs}

    def routes(link: pb.macvlan_link) -> set[tuple[int, bytes]]:
        return {(r.dst_len, r.gateway) for r in link.routes}

    problems = []
    if after.address != before.address:
        problems.append(f"MAC {mac_to_str(after.address)} != {mac_to_str(before.address)}")
    if addrs(after) != addrs(before):
        problems.append("addresses differ")
    if routes(after) != routes(before):
        problems.append("routes differ")
    if after.parent.ifindex != b_index or after.parent.name != nic_b:
        problems.append(f"parent is ifindex {after.parent.ifindex} ({after.parent.name or '?'}), not {nic_b}")
    if problems:
        raise DemoError("restored NIC: " + "; ".join(problems))
    detail(f"{IFNAME}: same MAC {mac_to_str(after.address)}, same {SERVICE_IP}/{PREFIX} and default route, "
           f"parent now {nic_b} (IFLA_LINK {b_index})")


def wait_exit(pid: int, timeout: float = 5.0) -> None:
    """The restored service exits by itself once the client hangs up."""
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            raise DemoError(f"the restored service (pid {pid}) did not exit after the client hung up")
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m criu_macvlan.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=("rpc", "cli"), default="rpc",
                        help="drive CRIU through criu-macvlan's RPC driver (default) or plain criu + action script")
    parser.add_argument("--criu", default=shutil.which("criu") or "/usr/sbin/criu", help="the criu binary")
    parser.add_argument("--keep", action="store_true", help="keep the images directory and CRIU's logs")
    parser.add_argument("--report", metavar="FILE", help="also write what happened as JSON (for tests)")
    parser.add_argument("--compare", type=int, metavar="N", help="instead: N migrations per path, alternating "
                        "criu-macvlan (rpc, cli) and native CRIU; medians of downtime and freeze")
    args = parser.parse_args(argv)
    if args.compare is not None:
        from .compare import compare

        return int(compare(args.compare, args.criu, args.report))

    report = Report(path=args.path)
    try:
        with signals_raise():
            if os.geteuid() != 0:
                raise DemoError("run it as root (it makes namespaces, links and runs criu)")
            step(f"demo: live-migrating a TCP service with a macvlan NIC from host A to host B ({args.path} path)")
            run(report, args.criu, args.keep, sys.executable)
    except CriuError as exc:
        if exc.log_tail:
            say("\n".join(f"      | {line}" for line in exc.log_tail.splitlines()[-8:]))
        report.error = str(exc)
    except (DemoError, CriuMacvlanError) as exc:
        report.error = str(exc)
    except Interrupted as exc:
        report.error = f"interrupted by {exc}"
    except OSError as exc:
        report.error = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    if args.report:
        Path(args.report).write_text(json.dumps(asdict(report), indent=1))
    if report.images_dir:
        say(f"      images and CRIU logs kept in {report.images_dir}")
    if report.error:
        say(f"demo: FAILED: {report.error}")
        return 1
    say(f"demo: SUCCESS: the service moved from {report.nic_a} to {report.nic_b} with its TCP connection; "
        f"{len(report.replies)} messages, 0 lost, 0 repeated; frozen {report.freeze_ms} ms, "
        f"dump {report.dump_ms} ms, restore {report.restore_ms} ms, "
        f"client-observed downtime {report.downtime_ms} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
