"""CRIU's ``netdev-<id>.img``: read it bounded, summarize its macvlans, switch their type.

Entries are split with :func:`.images.unframe` (every size checked) and parsed
with pycriu's generated ``net_device_entry`` class one chunk at a time; a rewrite
keeps every other entry byte for byte (see :func:`convert_netdev`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

from google.protobuf.message import DecodeError

from . import lean
from .errors import ImageError
from .images import MAX_LINKS, frame, parse_all, quiet_protobuf, read_file, unframe, write_atomic

NETDEV_MAGIC = 0x57373951  # CRIU's NETDEV_MAGIC (pycriu.images.magic "NETDEV")
# CRIU's nd_type values (images/netdev.proto)
ND_EXTLINK = 4
ND_MACVLAN = 7
MAX_NETDEV_ENTRIES = 4 * MAX_LINKS  # devices in one netdev image (one netns), macvlans and all others
NETDEV_PARSE_CHUNK = 256  # netdev entries parsed (and held) at a time
NETDEV_NAME = re.compile(r"netdev-(\d+)\.img")



def netdev_images(dir_fd: int) -> list[str]:
    """Names of CRIU's per-netns netdev images in the images dir, sorted by netns id."""
    found = [(int(m.group(1)), n) for n in os.listdir(dir_fd) if (m := NETDEV_NAME.fullmatch(n))]
    return [n for _, n in sorted(found)]


def netdev_entry_class() -> Any:
    """pycriu's ``net_device_entry`` class, loaded without the rest of pycriu (:func:`.lean.pycriu_schema`)."""
    try:
        return lean.pycriu_schema("netdev_pb2").net_device_entry
    except ImportError as e:
        raise ImageError(f"{e} (Debian: apt-get install python3-pycriu)") from None


class NetdevSummary:  # plain: the cold path defines no dataclass or NamedTuple (tests/test_cold_imports.py)
    """What a netdev image says about the macvlans in it (names and ifindexes)."""

    __slots__ = ("converted", "devices", "ipv6_off", "native")

    def __init__(self) -> None:
        self.native: list[tuple[str, int]] = []  # MACVLAN entries CRIU would recreate itself
        self.converted: list[tuple[str, int]] = []  # EXTLINK entries we converted (they keep their macvlan field)
        self.ipv6_off: list[str] = []  # converted entries saved with disable_ipv6 = 1
        self.devices: list[tuple[str, int]] = []  # every entry

    def __repr__(self) -> str:
        return f"NetdevSummary(native={self.native}, converted={self.converted}, ipv6_off={self.ipv6_off})"


# An entry's conf6 holds CRIU's per-device IPv6 sysctls by position, in the order of
# devconfs6[] in criu/net.c (alphabetical; 42 names since CRIU 3.x). A list of another
# length comes from a CRIU with another order, and is not read.
CRIU_DEVCONFS6 = 42
CRIU_DISABLE_IPV6 = 13


def ipv6_disabled(entry: Any) -> bool:
    """Whether a ``net_device_entry`` was dumped with IPv6 disabled on the device."""
    conf = entry.conf6
    return len(conf) == CRIU_DEVCONFS6 and conf[CRIU_DISABLE_IPV6].HasField("iarg") and (
        conf[CRIU_DISABLE_IPV6].iarg == 1
    )


def iter_netdev(dir_fd: int, name: str) -> Iterator[tuple[bytes, Any]]:
    """Each entry of a netdev image: its bytes and the parsed ``net_device_entry``.

    Bounded as the sidecar is: the file's size, the number of entries, and the
    memory (one parsed entry at a time; callers keep only what they need).
    """
    data = read_file(dir_fd, name)
    if data is None:
        raise ImageError(f"{name}: missing")
    raw = unframe(data, NETDEV_MAGIC, name, max_entries=MAX_NETDEV_ENTRIES)
    del data
    cls = netdev_entry_class()
    for start in range(0, len(raw), NETDEV_PARSE_CHUNK):  # fd 2 is quiet while parsing only, not while yielding
        with quiet_protobuf():
            part = raw[start : start + NETDEV_PARSE_CHUNK]
            chunk = [_netdev_entry(cls, name, i, payload) for i, payload in enumerate(part, start)]
        yield from chunk


def _netdev_entry(cls: Any, name: str, i: int, payload: bytes) -> tuple[bytes, Any]:
    entry = cls()
    try:
        parse_all(entry, payload)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ImageError(f"{name}: entry #{i} is not a net_device_entry ({exc})") from exc
    if not entry.IsInitialized():
        missing = ", ".join(entry.FindInitializationErrors())
        raise ImageError(f"{name}: entry #{i} lacks required fields: {missing}")
    return payload, entry


def read_netdev(dir_fd: int, name: str) -> tuple[list[bytes], list[Any]]:
    """Every entry of a netdev image at once (:func:`iter_netdev` keeps less in memory)."""
    raw: list[bytes] = []
    parsed: list[Any] = []
    for payload, entry in iter_netdev(dir_fd, name):
        raw.append(payload)
        parsed.append(entry)
    return raw, parsed


def summarize_netdev(dir_fd: int, name: str) -> NetdevSummary:
    return summarize_entries(entry for _, entry in iter_netdev(dir_fd, name))


def summarize_entries(entries: Iterable[Any]) -> NetdevSummary:
    """The macvlans among parsed ``net_device_entry`` messages."""
    summary = NetdevSummary()
    for e in entries:
        key = (e.name, e.ifindex)
        summary.devices.append(key)
        if e.type == ND_MACVLAN:
            summary.native.append(key)
        elif e.type == ND_EXTLINK and e.HasField("macvlan"):
            summary.converted.append(key)
            if ipv6_disabled(e):
                summary.ipv6_off.append(e.name)
    return summary


def convert_netdev(dir_fd: int, name: str, ifindexes: set[int], to_native: bool = False) -> int:
    """Switch the macvlan entries of ``ifindexes`` between MACVLAN and EXTLINK, in place.

    To EXTLINK (the default): CRIU will only set flags, MTU and MAC on a link our
    ``setup-namespaces`` hook made; the entry keeps its ``macvlan`` field, so
    ``to_native`` can switch it back. Every other entry stays byte-identical and
    unknown protobuf fields survive. Returns the number of entries changed (0: the
    file is left untouched).

    A changed entry is its original bytes followed by an encoded ``type`` field:
    protobuf parsers take the last value of a scalar field (concatenated
    messages merge), protobuf-c's in CRIU as well as pycriu's. Serializing whole
    entries again, each with its ~100 sysctl values, would cost the post-dump
    of a tree with many links time per link while the tree is frozen.
    """
    old, new = (ND_EXTLINK, ND_MACVLAN) if to_native else (ND_MACVLAN, ND_EXTLINK)
    retype = netdev_entry_class()(type=new).SerializePartialToString()
    changed = 0
    out = []
    for payload, e in iter_netdev(dir_fd, name):
        if e.type == old and e.ifindex in ifindexes and e.HasField("macvlan"):
            payload += retype
            changed += 1
        out.append(payload)
    if changed:
        write_atomic(dir_fd, name, frame(NETDEV_MAGIC, out))
    return changed
