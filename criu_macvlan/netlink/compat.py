"""pyroute2 as criu-macvlan uses it: its netlink layer alone, and attributes it lacks.

Importing this module changes pyroute2 for the **whole process**, not only for
criu-macvlan: :func:`_extend_macvlan_attrs` and :func:`_extend_addr_attrs` append
kernel attributes pyroute2 does not know to its ``macvx_data`` and ``ifaddrmsg``
classes (``nla_map``). An engine that embeds :class:`criu_macvlan.rpc.Criu` and
uses pyroute2 itself then decodes those attributes too (names it did not see
before, such as ``IFLA_MACVLAN_BC_CUTOFF`` or ``IFA_PROTO``, where it saw
``UNKNOWN`` ones); nothing pyroute2 already decoded changes. pyroute2's
``value_map``\\s are left as they are (see ``codec._numeric``).
"""

from __future__ import annotations

from .. import lean

lean.pyroute2_netlink()

from pyroute2.netlink import (  # noqa: E402
    NETLINK_ROUTE,
    NLA_F_NESTED,
    NLA_F_NET_BYTEORDER,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    nla_slot,
)
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted as DumpInterrupted  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError as PyrNetlinkError  # noqa: E402
from pyroute2.netlink.nlsocket import DEFAULT_RCVBUF, Marshal, NetlinkSocket  # noqa: E402
from pyroute2.netlink.rtnl import (  # noqa: E402
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNSID,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNSID,
    RTM_NEWROUTE,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg  # noqa: E402
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg, macvx_data  # noqa: E402
from pyroute2.netlink.rtnl.nsidmsg import nsidmsg  # noqa: E402
from pyroute2.netlink.rtnl.rtmsg import rtmsg  # noqa: E402

__all__ = [
    "DEFAULT_RCVBUF",
    "NETLINK_ROUTE",
    "NLA_F_NESTED",
    "NLA_F_NET_BYTEORDER",
    "NLM_F_ACK",
    "NLM_F_CREATE",
    "NLM_F_DUMP",
    "NLM_F_EXCL",
    "NLM_F_REQUEST",
    "RTM_DELLINK",
    "RTM_GETADDR",
    "RTM_GETLINK",
    "RTM_GETNSID",
    "RTM_GETROUTE",
    "RTM_NEWADDR",
    "RTM_NEWLINK",
    "RTM_NEWNSID",
    "RTM_NEWROUTE",
    "DumpInterrupted",
    "Marshal",
    "NetlinkSocket",
    "PyrNetlinkError",
    "ifaddrmsg",
    "ifinfmsg",
    "macvx_data",
    "nla_slot",
    "nsidmsg",
    "rtmsg",
]


def _extend_macvlan_attrs() -> None:
    """Teach pyroute2 the IFLA_MACVLAN_* attributes it lacks (kernel ``if_link.h``); process-wide."""
    names = {name for name, _ in macvx_data.nla_map}
    extra = (
        ("IFLA_MACVLAN_BC_QUEUE_LEN", "uint32"),  # 7
        ("IFLA_MACVLAN_BC_QUEUE_LEN_USED", "uint32"),  # 8
        ("IFLA_MACVLAN_BC_CUTOFF", "int32"),  # 9
    )
    if len(macvx_data.nla_map) == 7 and not names & {n for n, _ in extra}:
        macvx_data.nla_map = tuple(macvx_data.nla_map) + extra


def _extend_addr_attrs() -> None:
    """Teach pyroute2 the IFA_* attributes it lacks (kernel ``if_addr.h``, 9 to 11); process-wide."""
    names = {name for name, _ in ifaddrmsg.nla_map}
    extra = (
        ("IFA_RT_PRIORITY", "uint32"),  # 9: metric of the prefix route the kernel adds
        ("IFA_TARGET_NETNSID", "int32"),  # 10
        ("IFA_PROTO", "uint8"),  # 11: who made the address (IFAPROT_*)
    )
    if len(ifaddrmsg.nla_map) == 9 and not names & {n for n, _ in extra}:
        ifaddrmsg.nla_map = tuple(ifaddrmsg.nla_map) + extra


_extend_macvlan_attrs()
_extend_addr_attrs()
