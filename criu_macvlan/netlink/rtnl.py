"""The rtnetlink socket: read and make macvlan links, addresses and routes, many links per send.

Every function takes the network namespace it works in as an open fd of a
``/proc/<pid>/ns/net``-like file (``None``: the caller's own netns). A rtnetlink
socket stays bound to the netns it was opened in, so :class:`Rtnl` enters the
target netns only for the ``socket()`` call and returns at once.

Links are created from the **parent's** netns with ``IFLA_NET_NS_FD`` pointing at
the target netns: the kernel then makes the macvlan directly in the target, with
the requested ifindex, attached to the parent (``IFLA_LINK``) it resolves in the
socket's netns. No ``ip`` processes, no moves between namespaces.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

from .. import macvlan_pb2 as pb
from ..errors import NetlinkError
from ..netns import entered
from .codec import (
    IFF_UP,
    NLM_F_NEW,
    LinkReply,
    addr_request,
    ip_to_str,
    is_kernel_address,
    is_kernel_route,
    mac_to_bytes,
    macvlan_request,
    route_request,
    to_addr,
    to_macvlan,
    to_route,
)
from .compat import (
    DEFAULT_RCVBUF,
    NETLINK_ROUTE,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNSID,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNSID,
    RTM_NEWROUTE,
    DumpInterrupted,
    Marshal,
    NetlinkSocket,
    PyrNetlinkError,
    ifaddrmsg,
    ifinfmsg,
    nsidmsg,
    rtmsg,
)

RTEXT_FILTER_SKIP_STATS = 1 << 3  # IFLA_EXT_MASK: no IFLA_STATS/IFLA_STATS64 in link replies


def errno_of(exc: NetlinkError) -> int | None:
    """The kernel's errno behind one of our errors, if the kernel refused something."""
    cause = exc.__cause__
    return int(cause.code) if isinstance(cause, PyrNetlinkError) else None

def errmsg(exc: BaseException) -> str:
    if isinstance(exc, PyrNetlinkError):
        return f"{os.strerror(exc.code)} (errno {exc.code})"
    return str(exc)


DUMP_RETRIES = 10
BATCH_BYTES = 32 << 10  # of RTM_NEWLINK requests per send (the socket's send buffer is ~200 kB)
Keep = Callable[[Any], Any]  # a dump's reply -> what to keep of it, or None
Results = list[tuple[pb.macvlan_link, NetlinkError | None]]  # each link sent, and its error if it failed
KeepGoing = Callable[[], bool] | None  # asked between batches of new links


class _Marshal(Marshal):  # type: ignore[misc]
    """Parses only the rtnetlink messages we ask for (pyroute2's full rtnl marshal also loads
    the traffic-control schemas); links decoded lean (:class:`LinkReply`)."""

    msg_map: ClassVar[dict[int, type]] = {
        RTM_NEWLINK: LinkReply,
        RTM_NEWADDR: ifaddrmsg,
        RTM_NEWROUTE: rtmsg,
        RTM_NEWNSID: nsidmsg,
    }


class Rtnl:
    """One rtnetlink socket bound to one network namespace."""

    def __init__(self, netns_fd: int | None = None) -> None:
        try:
            with entered(netns_fd):
                self._sock: Any = NetlinkSocket(NETLINK_ROUTE, nlm_generator=True)
            self._sock.marshal = _Marshal()
            self._sock.bind()
            self._batch_seq = 0x10000
        except OSError as exc:
            raise NetlinkError(f"cannot open a netlink socket: {exc.strerror or exc}") from exc

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, msg: Any, msg_type: int, flags: int, keep: Keep | None = None) -> list[Any]:
        """The replies, or what ``keep`` makes of each as it arrives (``None``: dropped).

        With ``keep`` a dump of thousands of links never holds all of pyroute2's
        parsed messages at once (each is tens of kB).
        """
        # A dump races with changes elsewhere in the netns (NLM_F_DUMP_INTR): retry it.
        for attempt in range(DUMP_RETRIES):
            try:
                replies = self._sock.nlm_request(msg, msg_type=msg_type, msg_flags=flags)
                if keep is None:
                    return list(replies)
                return [item for item in map(keep, replies) if item is not None]
            except DumpInterrupted as exc:
                if attempt == DUMP_RETRIES - 1:
                    raise NetlinkError(
                        f"netlink dump interrupted {DUMP_RETRIES} times: the netns keeps changing"
                    ) from exc
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ reading

    def links(self, keep: Keep | None = None) -> list[Any]:
        """Every link of the netns (without statistics: no caller reads them)."""
        msg = ifinfmsg()
        msg["family"] = socket.AF_UNSPEC
        msg["attrs"] = [("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS)]
        return self._request(msg, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, keep)

    def macvlan_links(self, keep: Keep | None = None) -> list[Any]:
        """Like :meth:`links`, for macvlans only.

        The request asks the kernel for macvlans only (``ip link show type
        macvlan``; Linux 4.15+, older kernels send every link) and no statistics.
        """
        msg = ifinfmsg()
        msg["family"] = socket.AF_UNSPEC
        kind = {"attrs": [("IFLA_INFO_KIND", "macvlan")]}
        msg["attrs"] = [("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS), ("IFLA_LINKINFO", kind)]
        return self._request(msg, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, keep)

    def link(self, *, name: str | None = None, index: int | None = None) -> Any | None:
        """One link by name or index (without statistics), or ``None`` if there is none."""
        msg = ifinfmsg()
        msg["family"] = socket.AF_UNSPEC
        if index is not None:
            msg["index"] = index
        msg["attrs"] = [("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS)]
        if name is not None:
            msg["attrs"].append(("IFLA_IFNAME", name))
        try:
            found = self._request(msg, RTM_GETLINK, NLM_F_REQUEST)
        except PyrNetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                return None
            raise NetlinkError(f"cannot look up link {name or index}: {errmsg(exc)}") from exc
        return found[0] if found else None

    def addresses(self, keep: Keep | None = None) -> list[Any]:
        msg = ifaddrmsg()
        msg["family"] = socket.AF_UNSPEC
        return self._request(msg, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, keep)

    def routes(self, keep: Keep | None = None) -> list[Any]:
        msg = rtmsg()
        msg["family"] = socket.AF_UNSPEC
        return self._request(msg, RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, keep)

    def nsid_of(self, netns_fd: int) -> int | None:
        """The id this socket's netns uses for the netns ``netns_fd`` (``None``: none assigned)."""
        msg = nsidmsg()
        msg["attrs"] = [("NETNSA_FD", netns_fd)]
        try:
            reply = self._request(msg, RTM_GETNSID, NLM_F_REQUEST)
        except PyrNetlinkError:
            return None
        nsid = reply[0].get_attr("NETNSA_NSID") if reply else None
        return None if nsid is None or nsid >= 0x7FFFFFFF else int(nsid)

    # ----------------------------------------------------------- changing

    def create_macvlan(self, link: pb.macvlan_link, parent_index: int, target_fd: int) -> None:
        """Create ``link`` in the netns ``target_fd``, attached to ``parent_index`` of this netns."""
        ((_, error),) = self.create_macvlans([(link, parent_index)], target_fd)
        if error is not None:
            raise error

    def create_macvlans(
        self, items: Sequence[tuple[pb.macvlan_link, int]], target_fd: int, keep_going: KeepGoing = None
    ) -> Results:
        """Create each ``(link, parent_index)`` in the netns ``target_fd``: ``(link, error or None)`` each.

        The requests go out back to back, a batch of about ``BATCH_BYTES`` per send,
        and the ACKs are read after each batch: one round trip per batch, not per
        link. The kernel handles every request of a batch on its own, so links after
        a failed one in the same batch may exist; no further batch is sent after a
        failure, and the result has an entry for every link sent. ``keep_going``
        is asked before each batch after the first: ``False`` sends no more.
        """
        return self._create(((link, macvlan_request(link, index, target_fd)) for link, index in items), keep_going)

    def create_prepared(self, prepared: PreparedMacvlans, target_fd: int, keep_going: KeepGoing = None) -> Results:
        """:meth:`create_macvlans` with requests encoded ahead of time, into the netns ``target_fd``."""
        os.dup2(target_fd, prepared.slot, inheritable=False)  # the requests name this fd number
        return self._create(iter(prepared.requests), keep_going)

    def _create(self, requests: Iterator[tuple[pb.macvlan_link, bytes]], keep_going: KeepGoing) -> Results:
        results: Results = []
        batch: list[tuple[pb.macvlan_link, bytes]] = []
        size = 0
        for link, request in requests:
            if not batch and results and keep_going is not None and not keep_going():
                return results
            batch.append((link, request))
            size += len(request)
            if size >= BATCH_BYTES:
                results += self._send_batch(batch)
                if any(error is not None for _, error in results):
                    return results
                batch, size = [], 0
        if batch:
            results += self._send_batch(batch)
        return results

    def _send_batch(self, batch: list[tuple[pb.macvlan_link, bytes]]) -> Results:
        """Send the encoded requests of ``batch`` in one write; the kernel's verdict on each.

        Each request gets its sequence number and port id in its header here. Only
        the last one asks for an ACK: the kernel answers any request that fails
        whatever its flags say, and handles a batch in order, so the answer to the
        last request ends the batch; pyroute2 then parses one ACK per batch, not
        one per link (``nlm_request_batch`` queues each).
        """
        sock = self._sock
        # Numbers of our own, above pyroute2's pool (0xff-0xffff, for its requests): no bookkeeping per link
        seqs = range(self._batch_seq, self._batch_seq + len(batch))
        self._batch_seq += len(batch)
        data = bytearray()
        port = sock.epid or os.getpid()
        for seq, (_, request) in zip(seqs, batch, strict=True):
            offset = len(data)
            data += request
            flags = NLM_F_NEW if seq == seqs[-1] else NLM_F_NEW & ~NLM_F_ACK
            _NLMSG_TAIL.pack_into(data, offset + _NLMSG_TAIL_OFFSET, flags, seq, port)
        errors: dict[int, NetlinkError] = {}
        try:
            sock.sendto(data, (0, 0))
            pending = True
            while pending:
                for reply in sock.marshal.parse(sock.recv(DEFAULT_RCVBUF)):
                    seq = reply["header"]["sequence_number"]
                    failed = reply["header"]["error"]
                    if failed is not None and seq in seqs:
                        error = errors[seq] = NetlinkError(errmsg(failed))
                        error.__cause__ = failed  # as if raised from it: errno_of tells what the kernel refused
                    pending = pending and seq != seqs[-1]
        except OSError as exc:  # the verdicts not read yet are unknown: failures
            unknown = NetlinkError(f"netlink: {exc.strerror or exc}")
            return [(link, errors.get(seq, unknown)) for seq, (link, _) in zip(seqs, batch, strict=True)]
        return [(link, errors.get(seq)) for seq, (link, _) in zip(seqs, batch, strict=True)]

    def set_up(self, index: int) -> None:
        msg = ifinfmsg()
        msg["family"] = socket.AF_UNSPEC
        msg["index"] = index
        msg["flags"] = IFF_UP
        msg["change"] = IFF_UP
        try:
            self._request(msg, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK)
        except PyrNetlinkError as exc:
            raise NetlinkError(f"cannot set link {index} up: {errmsg(exc)}") from exc

    def delete_link(self, index: int) -> bool:
        """Delete link ``index``; ``False`` if it was already gone."""
        msg = ifinfmsg()
        msg["family"] = socket.AF_UNSPEC
        msg["index"] = index
        try:
            self._request(msg, RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK)
        except PyrNetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise NetlinkError(f"cannot delete link {index}: {errmsg(exc)}") from exc
        return True

    def add_address(self, index: int, addr: pb.macvlan_addr) -> None:
        """Add ``addr`` to link ``index``; an address that is already there is fine."""
        what = f"address {ip_to_str(addr.family, addr.address)}/{addr.prefixlen}"
        self._add(addr_request(index, addr), RTM_NEWADDR, what)

    def add_route(self, index: int, route: pb.macvlan_route) -> None:
        """Add ``route`` via link ``index``; a route that is already there is fine."""
        where = ip_to_str(route.family, route.dst) if route.HasField("dst") else "default"
        self._add(route_request(index, route), RTM_NEWROUTE, f"route {where}/{route.dst_len}")

    def _add(self, msg: Any, msg_type: int, what: str) -> None:
        """Send a creating request; the kernel's EEXIST (already there, as restored before) is fine."""
        try:
            self._request(msg, msg_type, NLM_F_NEW)
        except PyrNetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise NetlinkError(f"cannot add {what}: {errmsg(exc)}") from exc


# struct nlmsghdr {u32 len; u16 type; u16 flags; u32 seq; u32 pid}: the per-send part
_NLMSG_TAIL = struct.Struct("=HII")
_NLMSG_TAIL_OFFSET = 6


class PreparedMacvlans:
    """RTM_NEWLINK requests encoded before their target netns exists (RPC mode: while CRIU starts).

    A request names its target netns by an fd number (IFLA_NET_NS_FD). These name
    :attr:`slot`, an fd reserved here; :meth:`Rtnl.create_prepared` makes that
    number the real netns (``dup2``), so the encoded bytes go out unchanged.
    """

    def __init__(self, items: Sequence[tuple[pb.macvlan_link, int]]) -> None:
        self.slot = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.parents = [index for _, index in items]
        self.requests = [(link, macvlan_request(link, index, self.slot)) for link, index in items]

    def close(self) -> None:
        if self.slot >= 0:
            os.close(self.slot)
            self.slot = -1

    def __del__(self) -> None:  # a restore that failed before setup-namespaces: no fd leak in a long-lived engine
        self.close()


def read_macvlans(netns_fd: int, host_fd: int, with_l3: bool = True) -> list[pb.macvlan_link]:
    """Every macvlan of the netns ``netns_fd``, with its parent resolved in ``host_fd`` when there.

    ``with_l3`` adds each link's addresses and the routes through it (not the
    kernel's own prefix and local routes).
    """
    with Rtnl(netns_fd) as rtnl:
        links: list[pb.macvlan_link] = rtnl.macvlan_links(to_macvlan)
        if not links:
            return []
        host_nsid = rtnl.nsid_of(host_fd)
        if with_l3:
            by_index = {link.ifindex: link for link in links}

            # Kept as (owner, entry) pairs and added once the dump is complete:
            # an interrupted dump is retried from the start.
            def addr_of(msg: Any) -> tuple[pb.macvlan_link, pb.macvlan_addr] | None:
                owner = by_index.get(msg["index"])
                if owner is None or is_kernel_address(msg):
                    return None
                return owner, to_addr(msg)

            def route_of(msg: Any) -> tuple[pb.macvlan_link, pb.macvlan_route] | None:
                owner = by_index.get(msg.get_attr("RTA_OIF"))
                if owner is None or msg.get_attr("RTA_MULTIPATH") is not None:
                    return None
                route = to_route(msg)
                return None if is_kernel_route(route) else (owner, route)

            for owner, addr in rtnl.addresses(addr_of):
                owner.addrs.append(addr)
            for owner, route in rtnl.routes(route_of):
                owner.routes.append(route)
    parents = [link.parent for link in links if host_nsid is not None]
    parents = [p for p in parents if p.HasField("link_netnsid") and p.link_netnsid == host_nsid]
    if parents:
        with Rtnl(None) as host:  # one request per distinct parent, not per link
            found = {index: host.link(index=index) for index in {p.ifindex for p in parents}}
        for parent in parents:
            msg = found[parent.ifindex]
            if msg is not None:
                parent.name = msg.get_attr("IFLA_IFNAME")
                parent.address = mac_to_bytes(msg.get_attr("IFLA_ADDRESS"))
                parent.mtu = msg.get_attr("IFLA_MTU")
    return links
