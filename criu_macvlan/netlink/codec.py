"""The codec: sidecar entries from rtnetlink messages, and rtnetlink requests from sidecar entries.

No socket here: :func:`to_macvlan`, :func:`to_addr` and :func:`to_route` turn
messages pyroute2 parsed into ``macvlan_pb2`` entries; :func:`macvlan_request`
(and :class:`~.rtnl.PreparedMacvlans` ahead of time), :func:`addr_request` and
:func:`route_request` turn entries into the requests :class:`~.rtnl.Rtnl` sends.
pyroute2's message objects are untyped: they stay ``Any`` at this boundary.
"""

from __future__ import annotations

import functools
import socket
import struct
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

from .. import macvlan_pb2 as pb
from .compat import (
    NLA_F_NESTED,
    NLA_F_NET_BYTEORDER,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    RTM_NEWLINK,
    ifaddrmsg,
    ifinfmsg,
    macvx_data,
    nla_slot,
    rtmsg,
)

IFF_UP = 0x1
RT_TABLE_LOCAL = 255
RTPROT_KERNEL = 2
MACADDR_SET = 3
NLA_HDRLEN = 4  # struct nlattr
NLM_F_NEW = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
IFA_F_NODAD = 0x02
IFA_F_PERMANENT = 0x80
FOREVER = 0xFFFFFFFF
# IFA_PROTO values of the addresses the kernel makes itself (loopback, IPv6
# link-local, IPv6 autoconf from router advertisements): never saved.
IFAPROT_KERNEL = (1, 2, 3)


def mac_to_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))

def mac_to_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)

def ip_to_bytes(family: int, addr: str) -> bytes:
    return socket.inet_pton(family, addr)

def ip_to_str(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw)


# ------------------------------------------------------------ decoding


class LinkReply(ifinfmsg):  # type: ignore[misc]
    """An RTM_NEWLINK reply that decodes only the attributes our readers use
    (:func:`to_macvlan`, :func:`describe_link`, the announcer's and the parents' lookups).

    pyroute2 makes an object for each of the ~40 attributes of a link as it parses
    the message, most of which (statistics, AF_SPEC, queue counts, ...) we never
    read; in a forked ``serve`` child each of them is also fresh memory. This
    message keeps only those in :attr:`kept`, each decoded by pyroute2's own class
    for it, and answers ``get_attr`` like an ``ifinfmsg`` for them (``None`` for
    the others).
    """

    kept: ClassVar[dict[int, tuple[str, type]]] = {
        nla_type: (name, getattr(ifinfmsg, kind))
        for nla_type, (name, kind) in enumerate(ifinfmsg.nla_map)
        if name
        in {
            "IFLA_ADDRESS",
            "IFLA_IFNAME",
            "IFLA_MTU",
            "IFLA_MAX_MTU",
            "IFLA_LINK",
            "IFLA_MASTER",
            "IFLA_TXQLEN",
            "IFLA_LINKINFO",
            "IFLA_LINK_NETNSID",
        }
    }

    def decode_nlas(self, offset: int) -> None:
        """pyroute2's walk over the attributes (``nlmsg_base.decode_nlas``), skipping the unwanted ones."""
        end = self.offset + self.length
        attrs = self["attrs"]
        while offset + 4 <= end:
            length, nla_type = struct.unpack_from("HH", self.data, offset)
            length = min(max(length, 4), end - offset)
            kept = self.kept.get(nla_type & ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER))
            if kept is not None:
                name, cls = kept
                attrs.append(nla_slot(name, cls(data=self.data, offset=offset, length=length, parent=self)))
            offset += (length + 3) & ~3

def _slots(msg: Any) -> dict[str, Any]:
    """``msg``'s attributes by name (the first of each name, as ``get_attr`` finds it).

    One walk over the attributes, where each ``get_attr`` walks them all again;
    a value is decoded only when read (:func:`_value`).
    """
    slots: dict[str, Any] = {}
    for slot in msg["attrs"]:
        slots.setdefault(slot.name, slot)
    return slots

def _value(slots: dict[str, Any], name: str) -> Any:
    slot = slots.get(name)
    return None if slot is None else slot.value

def link_kind(msg: Any) -> str | None:
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None

def _numeric(value: Any, atom: Any) -> int:
    """The kernel's number for a value pyroute2 decoded through its ``value_map`` (e.g. ``"bridge"``).

    pyroute2's maps are left as they are: other pyroute2 users may share this process.
    """
    if isinstance(value, str):
        return int(next(k for k, v in atom.value_map.items() if v == value))
    return int(value)

def to_macvlan(msg: Any) -> pb.macvlan_link | None:
    """The sidecar entry (without L3) of an RTM_NEWLINK message of a macvlan; ``None`` for another link."""
    top = _slots(msg)
    info = _value(top, "IFLA_LINKINFO")
    if info is None:
        return None
    info_slots = _slots(info)
    if _value(info_slots, "IFLA_INFO_KIND") != "macvlan":
        return None
    return _macvlan_entry(msg, top, info_slots)

def _macvlan_entry(msg: Any, top: dict[str, Any], info: dict[str, Any]) -> pb.macvlan_link:
    data_msg = _value(info, "IFLA_INFO_DATA")
    data = _slots(data_msg) if data_msg is not None else {}
    mode = _value(data, "IFLA_MACVLAN_MODE")
    link = pb.macvlan_link(
        name=_value(top, "IFLA_IFNAME"),
        ifindex=msg["index"],
        mode=_numeric(mode, macvx_data.mode) if mode is not None else 0,
        address=mac_to_bytes(_value(top, "IFLA_ADDRESS")),
        mtu=_value(top, "IFLA_MTU"),
        link_flags=msg["flags"],
    )
    flags = _value(data, "IFLA_MACVLAN_FLAGS")
    if flags is not None:
        link.flags = _numeric(flags, macvx_data.flags)
    for attr, fld in (("IFLA_MACVLAN_BC_QUEUE_LEN", "bc_queue_len"), ("IFLA_MACVLAN_BC_CUTOFF", "bc_cutoff")):
        value = _value(data, attr)
        if value is not None:
            setattr(link, fld, value)
    macs = _value(data, "IFLA_MACVLAN_MACADDR_DATA")
    if macs is not None:
        link.source_macs.extend(mac_to_bytes(m) for m in macs.get_attrs("IFLA_MACVLAN_MACADDR"))
    txqlen = _value(top, "IFLA_TXQLEN")
    if txqlen is not None:
        link.txqlen = txqlen
    parent = link.parent
    lower = _value(top, "IFLA_LINK")
    if lower is not None:
        parent.ifindex = lower
    nsid = _value(top, "IFLA_LINK_NETNSID")
    if nsid is not None:
        parent.link_netnsid = nsid
    return link

def to_addr(msg: Any) -> pb.macvlan_addr:
    fam = msg["family"]
    local = msg.get_attr("IFA_LOCAL")
    address = msg.get_attr("IFA_ADDRESS")
    addr = pb.macvlan_addr(
        family=fam,
        address=ip_to_bytes(fam, local or address),
        prefixlen=msg["prefixlen"],
        scope=msg["scope"],
        flags=msg.get_attr("IFA_FLAGS") or msg["flags"],
    )
    if local and address and local != address:
        addr.peer = ip_to_bytes(fam, address)
    bcast = msg.get_attr("IFA_BROADCAST")
    if bcast:
        addr.broadcast = ip_to_bytes(fam, bcast)
    label = msg.get_attr("IFA_LABEL")
    if label:
        addr.label = label
    metric = msg.get_attr("IFA_RT_PRIORITY")
    if metric:
        addr.rt_priority = metric
    cache = msg.get_attr("IFA_CACHEINFO")
    if cache is not None and not addr.flags & IFA_F_PERMANENT:
        if cache["ifa_valid"] != FOREVER:
            addr.valid_lft = cache["ifa_valid"]
        if cache["ifa_preferred"] != FOREVER:
            addr.preferred_lft = cache["ifa_preferred"]
    return addr

def to_route(msg: Any) -> pb.macvlan_route:
    fam = msg["family"]
    table = msg.get_attr("RTA_TABLE")
    route = pb.macvlan_route(
        family=fam,
        dst_len=msg["dst_len"],
        table=table if table is not None else msg["table"],
        scope=msg["scope"],
        protocol=msg["proto"],
        type=msg["type"],
    )
    for attr, fld in (("RTA_DST", "dst"), ("RTA_GATEWAY", "gateway"), ("RTA_PREFSRC", "prefsrc")):
        value = msg.get_attr(attr)
        if value:
            setattr(route, fld, ip_to_bytes(fam, value))
    prio = msg.get_attr("RTA_PRIORITY")
    if prio is not None:
        route.priority = prio
    return route

def is_kernel_address(msg: Any) -> bool:
    """An address the kernel made itself (``IFA_PROTO``, Linux 5.18+), e.g. an IPv6 link-local one.

    The kernel makes it again when the restored link goes up; older kernels do not
    say, and such an address is then saved and restored like any other (adding it
    again is harmless: the kernel answers EEXIST, which restore ignores).
    """
    return msg.get_attr("IFA_PROTO") in IFAPROT_KERNEL

def is_kernel_route(route: pb.macvlan_route) -> bool:
    """Routes the kernel makes itself when an address is added or a link goes up.

    Its ``local`` table (local, broadcast, IPv6 anycast and multicast routes) and
    every ``proto kernel`` route: the IPv4/IPv6 prefix routes of addresses and
    IPv6's ``fe80::/64``, in whatever table the kernel put them. Routes a user or a
    daemon added (``proto boot``/``static``/``dhcp``/``ra``/...) are kept in every
    other table, the main one and numbered ones alike.
    """
    return bool(route.table == RT_TABLE_LOCAL or route.protocol == RTPROT_KERNEL)


if TYPE_CHECKING:  # a type only: a TypedDict compiles each field's annotation, on every cold action

    class LinkFacts(TypedDict):
        """What :func:`describe_link` tells about a link (``None``: the kernel did not say)."""

        name: str
        index: int
        kind: str | None  # IFLA_INFO_KIND: "macvlan", "veth", ...; None for a device without one
        up: bool
        mtu: int  # every link has one
        max_mtu: int | None
        address: str | None  # the MAC, as pyroute2 writes it
        link: int | None  # IFLA_LINK: the lower device's ifindex
        master: int | None


def describe_link(msg: Any) -> LinkFacts:
    """The facts ``check`` and idempotency tests need about a link message."""
    return {
        "name": msg.get_attr("IFLA_IFNAME"),
        "index": msg["index"],
        "kind": link_kind(msg),
        "up": bool(msg["flags"] & IFF_UP),
        "mtu": msg.get_attr("IFLA_MTU"),
        "max_mtu": msg.get_attr("IFLA_MAX_MTU"),
        "address": msg.get_attr("IFLA_ADDRESS"),
        "link": msg.get_attr("IFLA_LINK"),
        "master": msg.get_attr("IFLA_MASTER"),
    }


# ------------------------------------------------------------ encoding


# The RTM_NEWLINK request of a macvlan, packed directly: pyroute2's general encoder costs many
# times the packing for every link, paid while CRIU waits. The bytes are pyroute2's for the same
# ``ifinfmsg`` (tests/test_netlink_codec.py compares them); so are the attribute numbers.
_REQUEST_HEAD = struct.Struct("=IHHIIBxHiII")  # nlmsghdr, then ifinfomsg
_NLA_HEAD = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_IFLA = {name: number for number, (name, _) in enumerate(ifinfmsg.nla_map)}


def _nla(kind: int, payload: bytes) -> bytes:
    """One netlink attribute: header, payload, zeros up to the next 4-byte boundary."""
    size = NLA_HDRLEN + len(payload)
    return _NLA_HEAD.pack(size, kind) + payload + bytes(-size % 4)


def macvlan_request(link: pb.macvlan_link, parent_index: int, target_fd: int) -> bytes:
    """The RTM_NEWLINK request that makes ``link`` in ``target_fd`` on ``parent_index``, encoded;
    its sequence number and port id are 0, for the sender to set."""
    attrs = [
        _nla(_IFLA["IFLA_IFNAME"], link.name.encode() + b"\0"),
        _nla(_IFLA["IFLA_ADDRESS"], link.address),
        _nla(_IFLA["IFLA_MTU"], _U32.pack(link.mtu)),
        _nla(_IFLA["IFLA_LINK"], _U32.pack(parent_index)),
        _nla(_IFLA["IFLA_NET_NS_FD"], _U32.pack(target_fd)),
        _nla(_IFLA["IFLA_LINKINFO"], _linkinfo(_macvlan_settings(link))),
    ]
    if link.HasField("txqlen"):
        attrs.append(_nla(_IFLA["IFLA_TXQLEN"], _U32.pack(link.txqlen)))
    body = b"".join(attrs)
    head = _REQUEST_HEAD.pack(_REQUEST_HEAD.size + len(body), RTM_NEWLINK, NLM_F_NEW, 0, 0,
                              socket.AF_UNSPEC, 0, link.ifindex, 0, 0)
    return head + body


MacvlanSettings = tuple[int, int | None, tuple[bytes, ...], int | None, int | None]

def _macvlan_settings(link: pb.macvlan_link) -> MacvlanSettings:
    """What the IFLA_INFO_DATA of ``link`` is made of: mode, flags, source MACs, bc_queue_len, bc_cutoff."""
    return (
        link.mode,
        link.flags if link.HasField("flags") else None,
        tuple(link.source_macs),
        link.bc_queue_len if link.HasField("bc_queue_len") else None,
        link.bc_cutoff if link.HasField("bc_cutoff") else None,
    )

@functools.lru_cache(maxsize=64)
def _linkinfo(settings: MacvlanSettings) -> bytes:
    """The payload of the IFLA_LINKINFO attribute (kind ``macvlan`` and its IFLA_INFO_DATA), encoded by pyroute2."""
    mode, flags, source_macs, bc_queue_len, bc_cutoff = settings
    data: list[tuple[str, Any]] = [("IFLA_MACVLAN_MODE", mode)]
    if flags is not None:
        data.append(("IFLA_MACVLAN_FLAGS", flags))
    if source_macs:
        data.append(("IFLA_MACVLAN_MACADDR_MODE", MACADDR_SET))
        macs = [("IFLA_MACVLAN_MACADDR", mac_to_str(m)) for m in source_macs]
        data.append(("IFLA_MACVLAN_MACADDR_DATA", {"attrs": macs}))
    if bc_queue_len is not None:
        data.append(("IFLA_MACVLAN_BC_QUEUE_LEN", bc_queue_len))
    if bc_cutoff is not None:
        data.append(("IFLA_MACVLAN_BC_CUTOFF", bc_cutoff))
    info = ifinfmsg.ifinfo()
    info.setvalue({"attrs": [("IFLA_INFO_KIND", "macvlan"), ("IFLA_INFO_DATA", {"attrs": data})]})
    info.encode()
    return bytes(info.data[NLA_HDRLEN : info.length])  # the attribute without its header


def addr_request(index: int, addr: pb.macvlan_addr) -> Any:
    """The RTM_NEWADDR request that adds ``addr`` to link ``index`` (without DAD: it was done before the dump)."""
    fam = addr.family
    msg = ifaddrmsg()
    msg["family"] = fam
    msg["prefixlen"] = addr.prefixlen
    msg["index"] = index
    msg["scope"] = addr.scope
    flags = addr.flags | IFA_F_NODAD
    msg["flags"] = flags & 0xFF
    local = ip_to_str(fam, addr.address)
    attrs: list[tuple[str, Any]] = [("IFA_LOCAL", local)]
    attrs.append(("IFA_ADDRESS", ip_to_str(fam, addr.peer) if addr.HasField("peer") else local))
    if addr.HasField("broadcast"):
        attrs.append(("IFA_BROADCAST", ip_to_str(fam, addr.broadcast)))
    if addr.HasField("label"):
        attrs.append(("IFA_LABEL", addr.label))
    if addr.HasField("rt_priority"):
        attrs.append(("IFA_RT_PRIORITY", addr.rt_priority))
    attrs.append(("IFA_FLAGS", flags))
    if addr.HasField("valid_lft") or addr.HasField("preferred_lft"):
        cache = {
            "ifa_preferred": addr.preferred_lft if addr.HasField("preferred_lft") else FOREVER,
            "ifa_valid": addr.valid_lft if addr.HasField("valid_lft") else FOREVER,
            "cstamp": 0,
            "tstamp": 0,
        }
        attrs.append(("IFA_CACHEINFO", cache))
    msg["attrs"] = attrs
    return msg


def route_request(index: int, route: pb.macvlan_route) -> Any:
    """The RTM_NEWROUTE request that adds ``route`` via link ``index``."""
    fam = route.family
    msg = rtmsg()
    msg["family"] = fam
    msg["dst_len"] = route.dst_len
    msg["table"] = route.table if route.table < 256 else 252  # RT_TABLE_COMPAT; RTA_TABLE has the real one
    msg["scope"] = route.scope
    msg["proto"] = route.protocol
    msg["type"] = route.type or 1  # RTN_UNICAST
    attrs: list[tuple[str, Any]] = [("RTA_OIF", index), ("RTA_TABLE", route.table)]
    if route.HasField("dst"):
        attrs.append(("RTA_DST", ip_to_str(fam, route.dst)))
    if route.HasField("gateway"):
        attrs.append(("RTA_GATEWAY", ip_to_str(fam, route.gateway)))
    if route.HasField("priority"):
        attrs.append(("RTA_PRIORITY", route.priority))
    if route.HasField("prefsrc"):
        attrs.append(("RTA_PREFSRC", ip_to_str(fam, route.prefsrc)))
    msg["attrs"] = attrs
    return msg
