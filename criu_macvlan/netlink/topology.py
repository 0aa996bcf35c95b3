"""Veth pairs, bridges and the bridge FDB for simulated hosts (the demo); the plugin never makes these."""

from __future__ import annotations

import socket
from typing import Any

from ..errors import NetlinkError
from .codec import NLM_F_NEW
from .compat import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, RTM_NEWLINK, PyrNetlinkError, ifinfmsg
from .rtnl import Rtnl, errmsg


def _new_link(rtnl: Rtnl, attrs: list[tuple[str, Any]], what: str) -> None:
    msg = ifinfmsg()
    msg["family"] = socket.AF_UNSPEC
    msg["attrs"] = attrs
    try:
        rtnl._request(msg, RTM_NEWLINK, NLM_F_NEW)
    except PyrNetlinkError as exc:
        raise NetlinkError(f"cannot create {what}: {errmsg(exc)}") from exc

def add_veth(rtnl: Rtnl, name: str, peer: str, peer_netns_fd: int | None = None) -> None:
    """A veth pair: ``name`` in ``rtnl``'s netns, ``peer`` in ``peer_netns_fd`` (default: the same)."""
    peer_attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", peer)]
    if peer_netns_fd is not None:
        peer_attrs.append(("IFLA_NET_NS_FD", peer_netns_fd))
    data = {"attrs": [("VETH_INFO_PEER", {"attrs": peer_attrs})]}
    info = {"attrs": [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", data)]}
    _new_link(rtnl, [("IFLA_IFNAME", name), ("IFLA_LINKINFO", info)], f"veth {name}/{peer}")

def add_bridge(rtnl: Rtnl, name: str) -> None:
    info = {"attrs": [("IFLA_INFO_KIND", "bridge")]}
    _new_link(rtnl, [("IFLA_IFNAME", name), ("IFLA_LINKINFO", info)], f"bridge {name}")

def index_of(rtnl: Rtnl, name: str) -> int:
    msg = rtnl.link(name=name)
    if msg is None:
        raise NetlinkError(f"no link {name!r}")
    return int(msg["index"])

def set_master(rtnl: Rtnl, name: str, master: str) -> None:
    """Enslave link ``name`` to the bridge ``master`` (both in ``rtnl``'s netns)."""
    msg = ifinfmsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = index_of(rtnl, name)
    msg["attrs"] = [("IFLA_MASTER", index_of(rtnl, master))]
    try:
        rtnl._request(msg, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK)
    except PyrNetlinkError as exc:
        raise NetlinkError(f"cannot put {name} into {master}: {errmsg(exc)}") from exc

def fdb_port(rtnl: Rtnl, mac: str) -> int | None:
    """The ifindex of the bridge port the FDB of ``rtnl``'s netns sends ``mac`` to (``None``: not learned)."""
    from pyroute2.netlink.rtnl import RTM_GETNEIGH, RTM_NEWNEIGH
    from pyroute2.netlink.rtnl.ndmsg import ndmsg

    msg = ndmsg()
    msg["family"] = socket.AF_BRIDGE
    msg_map = rtnl._sock.marshal.msg_map
    msg_map[RTM_NEWNEIGH] = ndmsg
    try:
        entries = rtnl._request(msg, RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP)
    finally:
        del msg_map[RTM_NEWNEIGH]
    for entry in entries:
        if (entry.get_attr("NDA_LLADDR") or "").lower() == mac.lower() and entry.get_attr("NDA_VLAN") is None:
            return int(entry["ifindex"])
    return None
