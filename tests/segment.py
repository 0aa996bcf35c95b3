"""Test support: an L2 segment with a peer, a TCP server tree, L3 snapshots via ``ip -j``, and the
announcements seen on a bridge port."""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import time
from typing import Any

from helpers import Net, Procs, ip

PORT = 7000
V4, V6 = "10.231.0.2", "2001:db8:231::2"
PEER_V4, PEER_V6 = "10.231.0.1", "2001:db8:231::1"

# A tree that listens on the macvlan's v4 and v6 addresses once they exist.
SERVER = f"""
import select, socket, time
socks = []
for fam, addr in ((socket.AF_INET, {V4!r}), (socket.AF_INET6, {V6!r})):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    while True:
        try:
            s.bind((addr, {PORT}))
            break
        except OSError:
            time.sleep(0.05)
    s.listen(8)
    socks.append(s)
while True:
    ready, _, _ = select.select(socks, [], [])
    for s in ready:
        c, _ = s.accept()
        c.sendall(b"pong " + c.getsockname()[0].encode())
        c.close()
"""

CLIENT = """
import socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
deadline = time.monotonic() + float(sys.argv[3])
while True:
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as c:
            print(c.recv(100).decode())
            break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
"""


class Segment:
    """A bridge with two veth parents (A, B) for the tree and a peer netns on a third (C), all on one
    L2 segment.

    The peer reaches the tree through the bridge, as another host would. Not from A: the macvlan a
    dump leaves behind in the dumped tree's netns stays on A until the kernel has dismantled that
    netns (seconds, at times, while many are being torn down), and macvlan hands a frame for a
    sibling's MAC straight to the sibling, so the peer's frames for the restored link would go to it.
    """

    def __init__(self, net: Net, procs: Procs) -> None:
        self.bridge = net.bridge("sb")
        self.a = net.veth("sa")
        self.b = net.veth("sb")
        self.c = net.veth("sc")
        for parent in (self.a, self.b, self.c):
            ip("link", "set", parent + "p", "master", self.bridge)
        self.peer = procs.tree()
        net.macvlan_into(self.peer, "pe0", self.c, "mode", "bridge")
        ip("link", "set", "pe0", "up", pid=self.peer)
        ip("addr", "add", f"{PEER_V4}/24", "dev", "pe0", pid=self.peer)
        ip("addr", "add", f"{PEER_V6}/64", "dev", "pe0", "nodad", pid=self.peer)

    def ask(self, addr: str, wait: float = 5.0) -> str:
        """Connect from the peer to ``addr``:PORT and return the server's answer."""
        res = subprocess.run(
            ["nsenter", "-t", str(self.peer), "-n", "python3", "-c", CLIENT, addr, str(PORT), str(wait)],
            capture_output=True, text=True, timeout=wait + 10,
        )
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()


def configure_l3(net: Net, pid: int, parent: str, name: str = "mvb") -> None:
    """The macvlan ``name`` with every kind of L3 state empty-netns mode must carry."""
    net.macvlan_into(pid, name, parent, "mode", "bridge")
    ip("link", "set", name, "address", "02:42:ac:11:00:02", "up", pid=pid)
    ip("addr", "add", f"{V4}/24", "dev", name, "metric", "77", pid=pid)  # prefix route metric 77
    ip("addr", "add", "10.231.0.3/24", "dev", name, "label", f"{name}:1", pid=pid)  # secondary, label
    ip("addr", "add", "10.233.0.2/24", "dev", name, "valid_lft", "1000", "preferred_lft", "500", pid=pid)
    ip("addr", "add", f"{V6}/64", "dev", name, "nodad", pid=pid)
    ip("route", "add", "default", "via", PEER_V4, "dev", name, "metric", "50", pid=pid)
    ip("-6", "route", "add", "default", "via", PEER_V6, "dev", name, "metric", "60", pid=pid)
    ip("route", "add", "10.240.0.0/16", "via", PEER_V4, "dev", name, "table", "100", "proto", "static", pid=pid)
    ip("route", "add", "10.250.0.0/16", "dev", name, "scope", "link", "src", V4, pid=pid)
    # a gateway reachable only through the device route above: restore order matters
    ip("route", "add", "10.251.0.0/16", "via", "10.250.0.1", "dev", name, "proto", "static", pid=pid)


def addresses(pid: int, name: str) -> list[tuple[Any, ...]]:
    """The link's addresses without the kernel's IPv6 link-local one and without lifetimes."""
    out = json.loads(ip("-j", "addr", "show", "dev", name, pid=pid))
    return sorted(
        (a["family"], a["local"], a["prefixlen"], a.get("scope"), a.get("label"), a.get("broadcast"),
         a.get("valid_life_time", 0) < 0xFFFFFFFF)
        for a in out[0]["addr_info"]
        if not a["local"].startswith("fe80:")
    )


def lifetime(pid: int, name: str, local: str) -> tuple[int, int]:
    out = json.loads(ip("-j", "addr", "show", "dev", name, pid=pid))
    a = next(a for a in out[0]["addr_info"] if a["local"] == local)
    return int(a["valid_life_time"]), int(a["preferred_life_time"])


def routes(pid: int) -> list[tuple[Any, ...]]:
    """Every route of every table, v4 and v6, minus fields that change on their own.

    The kernel's IPv6 link-local routes are left out: they follow the kernel's own
    link-local address, which appears when its DAD ends, at no fixed time.
    """
    found = []
    for fam in ("-4", "-6"):
        for r in json.loads(ip(fam, "-j", "route", "show", "table", "all", pid=pid)):
            if r["dst"].startswith("fe80:"):
                continue
            found.append(
                (fam, r.get("type"), r["dst"], r.get("gateway"), r.get("dev"), r.get("table"), r.get("metric"),
                 r.get("protocol"), r.get("scope"), r.get("prefsrc"))
            )
    return sorted(found, key=repr)


def wait_listening(seg: Segment) -> None:
    for addr in (V4, V6):
        assert seg.ask(addr, wait=10) == f"pong {addr}"


def netdev_images(path: Any) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith("netdev-"))


def ours(names: set[str]) -> set[str]:
    """The link names a test of this process made (other engineers' tests run in parallel)."""
    tag = f"{os.getpid() % 10000:04d}"
    return {n for n in names if tag in n or n.startswith(("mv", "pe0"))}


ETH_P_ALL = 0x0003


class Announcements:
    """Counts the announcements that cross a bridge port of the host's netns."""

    def __init__(self, ifname: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, 0))

    def close(self) -> None:
        self.sock.close()

    def count(self, mac: str, v4: str, v6: str | None, rounds: int, bare: str | None = None,
              timeout: float = 20) -> dict[str, int]:
        """ARP requests and replies for ``v4`` and NAs for ``v6`` from ``mac``, and the frames of a link
        without addresses from ``bare``: read until each expected kind reached ``rounds``, or ``timeout``."""
        src = bytes.fromhex(mac.replace(":", ""))
        other = bytes.fromhex(bare.replace(":", "")) if bare else None
        ip4 = socket.inet_pton(socket.AF_INET, v4)
        ip6 = socket.inet_pton(socket.AF_INET6, v6) if v6 else None
        seen = {"request": 0, "reply": 0} | ({"na": 0} if ip6 else {}) | ({"hello": 0} if other else {})
        deadline = time.monotonic() + timeout
        while min(seen.values()) < rounds and time.monotonic() < deadline:
            if not select.select([self.sock], [], [], 0.5)[0]:
                continue
            frame = self.sock.recv(65535)
            if other and frame[6:12] == other and frame[12:14] == b"\x88\xb5" and frame[:6] == b"\xff" * 6:
                seen["hello"] += 1
            if frame[6:12] != src:
                continue
            if frame[12:14] == b"\x08\x06" and frame[28:32] == ip4 == frame[38:42]:
                seen["request" if struct.unpack("!H", frame[20:22])[0] == 1 else "reply"] += 1
            elif ip6 and frame[12:14] == b"\x86\xdd" and frame[20] == 58 and frame[54] == 136 and frame[62:78] == ip6:
                assert frame[21] == 255 and frame[58] & 0x20  # hop limit 255, override
                seen["na"] += 1
        return seen
