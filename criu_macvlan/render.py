"""The sidecar for people: a table, and JSON that round-trips every field.

JSON is protobuf's own mapping (``json_format``, field names as in
``images/macvlan.proto``) except that bytes holding MAC or IP addresses are
written as ``02:42:ac:11:00:02`` / ``10.0.0.2`` / ``2001:db8::2`` instead of
base64. :func:`from_json` reverses exactly that, so
``from_json(to_json(s))`` equals ``s`` field for field.
"""

from __future__ import annotations

import base64
import json
import socket
from typing import Any

from google.protobuf import json_format

from . import macvlan_pb2 as pb
from .errors import ImageError, printable
from .images import MACVLAN_FLAGS, MACVLAN_MODES, Sidecar, validate

_FAMILIES = {2: socket.AF_INET, 10: socket.AF_INET6}
_ADDR_IPS = ("address", "broadcast", "peer")
_ROUTE_IPS = ("dst", "gateway", "prefsrc")


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def mac_bytes(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError(f"bad MAC address {text!r}")
    return bytes(int(p, 16) for p in parts)


def ip_text(family: int, raw: bytes) -> str:
    af = _FAMILIES.get(family)
    if af is None:
        return base64.b64encode(raw).decode()  # unknown family: stay lossless
    return socket.inet_ntop(af, raw)


def ip_bytes(family: int, text: str) -> bytes:
    af = _FAMILIES.get(family)
    return base64.b64decode(text) if af is None else socket.inet_pton(af, text)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def to_dict(sidecar: Sidecar) -> dict[str, Any]:
    links = []
    for link in sidecar.links:
        d = json_format.MessageToDict(link, preserving_proto_field_name=True)
        d["address"] = mac_text(link.address)
        if link.source_macs:
            d["source_macs"] = [mac_text(m) for m in link.source_macs]
        if link.parent.HasField("address"):
            d["parent"]["address"] = mac_text(link.parent.address)
        for out, addr in zip(d.get("addrs", []), link.addrs, strict=True):
            for f in _ADDR_IPS:
                if addr.HasField(f):
                    out[f] = ip_text(addr.family, getattr(addr, f))
        for out, route in zip(d.get("routes", []), link.routes, strict=True):
            for f in _ROUTE_IPS:
                if route.HasField(f):
                    out[f] = ip_text(route.family, getattr(route, f))
        links.append(d)
    return {"head": json_format.MessageToDict(sidecar.head, preserving_proto_field_name=True), "links": links}


def from_dict(data: dict[str, Any], name: str = "JSON") -> Sidecar:
    """The inverse of :func:`to_dict`; the result is validated like an image."""
    try:
        head = json_format.ParseDict(data["head"], pb.macvlan_head())
        links = []
        for d in data["links"]:
            d = json.loads(json.dumps(d))  # a copy to rewrite
            d["address"] = _b64(mac_bytes(d["address"]))
            d["source_macs"] = [_b64(mac_bytes(m)) for m in d.get("source_macs", [])]
            if "address" in d.get("parent", {}):
                d["parent"]["address"] = _b64(mac_bytes(d["parent"]["address"]))
            for addr in d.get("addrs", []):
                for f in _ADDR_IPS:
                    if f in addr:
                        addr[f] = _b64(ip_bytes(addr.get("family", 0), addr[f]))
            for route in d.get("routes", []):
                for f in _ROUTE_IPS:
                    if f in route:
                        route[f] = _b64(ip_bytes(route.get("family", 0), route[f]))
            links.append(json_format.ParseDict(d, pb.macvlan_link()))
    except (KeyError, TypeError, ValueError, OSError, json_format.ParseError) as exc:
        raise ImageError(f"{name}: not a criu-macvlan sidecar in JSON ({type(exc).__name__}: {exc})") from exc
    sidecar = Sidecar(head, links)
    validate(sidecar, name)
    return sidecar


def to_json(sidecar: Sidecar) -> str:
    return json.dumps(to_dict(sidecar), indent=2)


def from_json(text: str, name: str = "JSON") -> Sidecar:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ImageError(f"{name}: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ImageError(f"{name}: not a criu-macvlan sidecar in JSON")
    return from_dict(data, name)


def table(sidecar: Sidecar) -> str:
    head = sidecar.head
    lines = [
        f"macvlan.img v{head.version}: {head.n_links} link(s), dumped on {printable(head.hostname) or '?'}"
        f" (netns inode {head.netns_inode or '?'}){', empty-ns net' if head.empty_ns else ''}"
    ]
    rows: list[tuple[str, ...]] = [("NAME", "IFINDEX", "MODE", "FLAGS", "MAC", "MTU", "STATE", "PARENT", "ADDRESSES")]
    for link in sidecar.links:
        flags = [n for bit, n in MACVLAN_FLAGS.items() if link.flags & bit]
        parent = link.parent.name or (f"#{link.parent.ifindex}" if link.parent.HasField("ifindex") else "-")
        addrs = [f"{ip_text(a.family, a.address)}/{a.prefixlen}" for a in link.addrs]
        extra = [f"src:{mac_text(m)}" for m in link.source_macs]
        rows.append(tuple(printable(cell) for cell in (
            link.name, str(link.ifindex), MACVLAN_MODES.get(link.mode, str(link.mode)), ",".join(flags) or "-",
            mac_text(link.address), str(link.mtu), "UP" if link.link_flags & 1 else "DOWN", parent,
            " ".join(addrs + extra) or "-",
        )))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return "\n".join(lines)
