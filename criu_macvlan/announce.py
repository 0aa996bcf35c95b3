"""Tell the network where a restored macvlan's MAC lives now (see docs/announce.md).

A macvlan restored on another host's NIC keeps its MAC, but the switches still send
that MAC's frames to the old host's port until the workload happens to talk, or the
entry ages out. So, as QEMU does after a live migration (``announce-self``), every
restored link that is up sends, from inside the restored netns, through one raw
``AF_PACKET`` socket:

* per IPv4 address: a gratuitous ARP request and a gratuitous ARP reply
  (``arping -U`` and ``arping -A``), to the broadcast MAC;
* per IPv6 address (not tentative): an unsolicited neighbour advertisement
  (RFC 4861 7.2.6: override flag, target link-layer address option) to ff02::1;
* a link with no address: one broadcast frame of the local experimental
  ethertype 0x88b5, so that switches learn its port.

The first round goes out at ``post-setup-namespaces`` (addresses restored, the
network still locked, tasks not yet running); the next ones follow QEMU's schedule
from a detached process (:mod:`.announcer`) that exits after the last round: the
repeats cost the restore nothing.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Mapping

from .errors import UsageError

ENV = "CRIU_MACVLAN_ANNOUNCE"
CONFIG_OPTION = "macvlan-announce"
CONFIG_FILE = "/etc/criu/criu-macvlan.conf"
CONFIG_ENV = "CRIU_MACVLAN_CONFIG"

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_LOCAL_EXP = 0x88B5  # IEEE 802 local experimental ethertype
BROADCAST = b"\xff" * 6
ALL_NODES_MAC = bytes.fromhex("333300000001")
ALL_NODES = socket.inet_pton(socket.AF_INET6, "ff02::1")
MIN_FRAME = 60  # Ethernet minimum without FCS
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
IFF_UP = 0x1
MAX_ROUNDS = 100
MAX_MS = 60_000


class Schedule:  # plain: the cold path defines no dataclass or NamedTuple (tests/test_cold_imports.py)
    """QEMU's announce-self parameters: ``rounds`` rounds, the first at once; after
    round k the next comes ``min(interval + (k - 1) * step, max)`` ms later."""

    __slots__ = ("interval", "max", "rounds", "step")

    def __init__(self, rounds: int = 5, interval: int = 50, step: int = 100, max: int = 550) -> None:
        self.rounds, self.interval, self.step, self.max = rounds, interval, step, max

    def delays(self) -> list[float]:
        """Seconds to wait before each round after the first."""
        top = max(self.max, self.interval)
        return [min(self.interval + k * self.step, top) / 1000 for k in range(self.rounds - 1)]

    def spec(self) -> str:
        return f"rounds={self.rounds},interval={self.interval},step={self.step},max={self.max}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash(self.spec())

    def __repr__(self) -> str:
        return f"Schedule({self.spec()})"


DEFAULT = Schedule()


def parse(spec: str | bool, where: str = "announce") -> Schedule | None:
    """``off`` (``None``), ``on``, or ``rounds=N,interval=MS[,step=MS][,max=MS]`` over the defaults."""
    if isinstance(spec, bool):
        return DEFAULT if spec else None
    text = spec.strip().lower()
    if text in ("off", "no", "0", "false"):
        return None
    if text in ("on", "yes", "1", "true", "default", ""):
        return DEFAULT
    values = {"rounds": DEFAULT.rounds, "interval": DEFAULT.interval, "step": DEFAULT.step, "max": DEFAULT.max}
    for item in text.split(","):
        key, eq, raw = item.strip().partition("=")
        limit = MAX_ROUNDS if key == "rounds" else MAX_MS
        if key not in values or not eq or not raw.isdigit() or int(raw) > limit:
            raise UsageError(
                f"{where}: bad value {spec!r}: expected off, on, or rounds=N,interval=MS[,step=MS][,max=MS] "
                f"(rounds <= {MAX_ROUNDS}, times <= {MAX_MS} ms)"
            )
        values[key] = int(raw)
    return Schedule(**values) if values["rounds"] > 0 else None


def configured(explicit: str | bool | None, env: Mapping[str, str]) -> Schedule | None:
    """The schedule to use: the caller's (API, CLI), else ``$CRIU_MACVLAN_ANNOUNCE``, else
    a ``macvlan-announce`` line of ``/etc/criu/criu-macvlan.conf`` or ``$CRIU_MACVLAN_CONFIG``
    (the last one read wins), else the default. Raises :class:`UsageError` on a bad value."""
    if explicit is not None:
        return parse(explicit)
    if env.get(ENV):
        return parse(env[ENV], f"${ENV}")
    from .criuconf import MAX_CONFIG_BYTES, config_statements

    found: tuple[str, str] | None = None
    for path in (CONFIG_FILE, env.get(CONFIG_ENV, "")):
        try:
            with open(path, "rb") as f:
                text = f.read(MAX_CONFIG_BYTES).decode("utf-8", "replace")
        except OSError:
            continue
        for name, value in config_statements(text):
            if name == CONFIG_OPTION:
                found = value, path
    return parse(found[0], f"{CONFIG_OPTION} in {found[1]}") if found else DEFAULT


# ------------------------------------------------------------------ frames


def _pad(frame: bytes) -> bytes:
    return frame.ljust(MIN_FRAME, b"\0")


def garp(mac: bytes, ip4: bytes) -> list[bytes]:
    """A gratuitous ARP request (target MAC zero) and reply (target MAC ours), both broadcast."""
    eth = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    frames = []
    for op, target_mac in ((1, b"\0" * 6), (2, mac)):
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + mac + ip4 + target_mac + ip4
        frames.append(_pad(eth + arp))
    return frames


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int(word) for word in struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def unsolicited_na(mac: bytes, ip6: bytes) -> bytes:
    """An unsolicited neighbour advertisement for ``ip6`` from ``ip6`` to ff02::1, hop limit 255,
    override flag set, with the target link-layer address option."""
    flags = 0x20000000  # O; neither R nor S
    body = struct.pack("!BBHI", 136, 0, 0, flags) + ip6 + struct.pack("!BB", 2, 1) + mac
    pseudo = ip6 + ALL_NODES + struct.pack("!I3xB", len(body), 58)
    body = body[:2] + struct.pack("!H", _checksum(pseudo + body)) + body[4:]
    ipv6 = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + ip6 + ALL_NODES
    return ALL_NODES_MAC + mac + struct.pack("!H", ETH_P_IPV6) + ipv6 + body


def hello(mac: bytes) -> bytes:
    """One broadcast frame from ``mac`` for a link without addresses."""
    return _pad(BROADCAST + mac + struct.pack("!H", ETH_P_LOCAL_EXP) + b"criu-macvlan announce")


class LinkFrames:
    """One link's announcement: its name, its frames, and ``what`` they are for the log ("2 ARP, 1 NA")."""

    __slots__ = ("frames", "name", "what")

    def __init__(self, name: str, frames: list[bytes], what: str) -> None:
        self.name, self.frames, self.what = name, frames, what

    def __repr__(self) -> str:
        return f"LinkFrames({self.name!r}, {len(self.frames)} frames, {self.what!r})"


def frames_for(mac: bytes, v4: Iterable[bytes], v6: Iterable[bytes]) -> tuple[list[bytes], str]:
    v4, v6 = list(v4), list(v6)
    frames = [f for ip in v4 for f in garp(mac, ip)] + [unsolicited_na(mac, ip) for ip in v6]
    if not frames:
        return [hello(mac)], "1 frame (no address)"
    return frames, f"{2 * len(v4)} ARP, {len(v6)} NA"


def read_links(indexes: Iterable[int]) -> list[LinkFrames]:
    """The frames for the links ``indexes`` of this thread's netns that are up, from their
    addresses now (tentative and DAD-failed IPv6 addresses are left out)."""
    from .netlink import Rtnl, mac_to_bytes

    wanted = set(indexes)
    result = []
    with Rtnl(None) as rtnl:
        addrs: dict[int, tuple[list[bytes], list[bytes]]] = {i: ([], []) for i in wanted}
        for msg in rtnl.addresses():
            index = msg["index"]
            raw = msg.get_attr("IFA_ADDRESS")
            flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
            if index not in wanted or raw is None:
                continue
            if msg["family"] == socket.AF_INET:
                addrs[index][0].append(socket.inet_pton(socket.AF_INET, msg.get_attr("IFA_LOCAL") or raw))
            elif msg["family"] == socket.AF_INET6 and not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
                addrs[index][1].append(socket.inet_pton(socket.AF_INET6, raw))
        for msg in rtnl.links():
            index = msg["index"]
            if index in wanted and msg["flags"] & IFF_UP and msg.get_attr("IFLA_ADDRESS"):
                frames, what = frames_for(mac_to_bytes(msg.get_attr("IFLA_ADDRESS")), *addrs[index])
                result.append(LinkFrames(msg.get_attr("IFLA_IFNAME"), frames, what))
    return result


def packet_socket() -> socket.socket:
    """A raw packet socket of this thread's netns that receives nothing (protocol 0)."""
    return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)


def send_round(sock: socket.socket, links: list[LinkFrames]) -> dict[str, str]:
    """Send every link's frames once; the first error of each link that had one."""
    errors: dict[str, str] = {}
    for link in links:
        for frame in link.frames:
            try:
                sock.sendto(frame, (link.name, 0))
            except OSError as exc:
                errors.setdefault(link.name, exc.strerror or str(exc))
    return errors


def summary(links: list[LinkFrames]) -> str:
    return ", ".join(f"{link.name} ({link.what})" for link in links) or "no link (none is up)"


def warning(name: str, error: str) -> str:
    return f"cannot announce {name}: {error} (the restore goes on; switches learn its port when it sends)"
