"""Netlink: read and make macvlan links, addresses and routes. The only user of pyroute2.

* :mod:`.compat`: pyroute2's netlink layer imported without its package
  ``__init__`` (cheap for a cold action), and the kernel attributes pyroute2 lacks,
  added to its message classes **for the whole process** (see there).
* :mod:`.codec`: sidecar entries from rtnetlink messages and requests from
  sidecar entries; MAC and IP helpers. No socket.
* :mod:`.rtnl`: :class:`Rtnl`, one rtnetlink socket in one network namespace,
  with batched link creation, and :func:`read_macvlans`.
* :mod:`.topology`: veth pairs, bridges and the FDB of simulated hosts (the
  demo); the plugin never uses it.

Importing this package loads pyroute2 (``criu-macvlan serve`` imports it to have
it loaded before the first request); the names below are the API the rest of
criu-macvlan uses.
"""

from ..netns import entered
from .codec import describe_link, ip_to_bytes, ip_to_str, link_kind, mac_to_bytes, mac_to_str, to_macvlan
from .rtnl import PreparedMacvlans, Rtnl, errno_of, read_macvlans

__all__ = [
    "PreparedMacvlans",
    "Rtnl",
    "describe_link",
    "entered",
    "errno_of",
    "ip_to_bytes",
    "ip_to_str",
    "link_kind",
    "mac_to_bytes",
    "mac_to_str",
    "read_macvlans",
    "to_macvlan",
]
