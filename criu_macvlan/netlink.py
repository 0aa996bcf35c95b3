"""Netlink: read and make macvlan links, addresses and routes. The only user of pyroute2.

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
import functools
import os
import platform
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from queue import SimpleQueue
from typing import Any, ClassVar, TypeVar

from . import macvlan_pb2 as pb
from .errors import NetlinkError
from .lean import import_submodules
from .netns import open_own


def _import_pyroute2_lean() -> None:
    """Import pyroute2's netlink layer without its package ``__init__`` (see :mod:`.lean`).

    While importing, ``platform`` answers pyroute2.config from ``os.uname()`` and
    ``struct``: its own ``uname()`` runs ``uname -p`` and its ``architecture()``
    runs ``file(1)`` on the interpreter, two processes per cold action.
    """
    saved = platform.uname, platform.machine, platform.architecture
    platform.uname = lambda: (*os.uname(), "")  # type: ignore[assignment,return-value]
    platform.machine = lambda: os.uname().machine
    platform.architecture = lambda *a, **k: (f"{8 * struct.calcsize('P')}bit", "ELF")
    try:
        import_submodules("pyroute2", "netlink.nlsocket", "netlink.rtnl.ifinfmsg")
    finally:
        platform.uname, platform.machine, platform.architecture = saved


_import_pyroute2_lean()

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
    nlmsg,
)
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted as _DumpInterrupted  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError as _PyrNetlinkError  # noqa: E402
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


class _Marshal(Marshal):  # type: ignore[misc]
    """Parses only the rtnetlink messages we ask for (pyroute2's full rtnl
    marshal also loads the traffic-control schemas)."""

    msg_map: ClassVar[dict[int, type]] = {
        RTM_NEWLINK: ifinfmsg,
        RTM_NEWADDR: ifaddrmsg,
        RTM_NEWROUTE: rtmsg,
        RTM_NEWNSID: nsidmsg,
    }


def _extend_macvlan_attrs() -> None:
    """Teach pyroute2 the IFLA_MACVLAN_* attributes it lacks (kernel ``if_link.h``)."""
    names = {name for name, _ in macvx_data.nla_map}
    extra = (
        ("IFLA_MACVLAN_BC_QUEUE_LEN", "uint32"),  # 7
        ("IFLA_MACVLAN_BC_QUEUE_LEN_USED", "uint32"),  # 8
        ("IFLA_MACVLAN_BC_CUTOFF", "int32"),  # 9
    )
    if len(macvx_data.nla_map) == 7 and not names & {n for n, _ in extra}:
        macvx_data.nla_map = tuple(macvx_data.nla_map) + extra


_extend_macvlan_attrs()


def _extend_addr_attrs() -> None:
    """Teach pyroute2 the IFA_* attributes it lacks (kernel ``if_addr.h``, 9 to 11)."""
    names = {name for name, _ in ifaddrmsg.nla_map}
    extra = (
        ("IFA_RT_PRIORITY", "uint32"),  # 9: metric of the prefix route the kernel adds
        ("IFA_TARGET_NETNSID", "int32"),  # 10
        ("IFA_PROTO", "uint8"),  # 11: who made the address (IFAPROT_*)
    )
    if len(ifaddrmsg.nla_map) == 9 and not names & {n for n, _ in extra}:
        ifaddrmsg.nla_map = tuple(ifaddrmsg.nla_map) + extra


_extend_addr_attrs()


class _MacvlanFacts(ifinfmsg):  # type: ignore[misc]
    """An RTM_NEWLINK reply that decodes only the attributes :func:`to_macvlan` reads.

    pyroute2 makes an object for each of the ~40 attributes of a link as it parses
    the message, most of which (statistics, AF_SPEC, queue counts, ...) a dump of
    macvlans never reads. This message keeps only those in :attr:`kept`, each
    decoded by pyroute2's own class for it, and answers ``get_attr`` like an
    ``ifinfmsg`` for them (``None`` for the others).
    """

    kept: ClassVar[dict[int, tuple[str, type]]] = {
        nla_type: (name, getattr(ifinfmsg, kind))
        for nla_type, (name, kind) in enumerate(ifinfmsg.nla_map)
        if name
        in {"IFLA_ADDRESS", "IFLA_IFNAME", "IFLA_MTU", "IFLA_LINK", "IFLA_TXQLEN", "IFLA_LINKINFO", "IFLA_LINK_NETNSID"}
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


class _NewMacvlanMsg(nlmsg):  # type: ignore[misc]
    """The RTM_NEWLINK request of :func:`_macvlan_msg`, cheaper for pyroute2 to encode than an ``ifinfmsg``.

    Its attributes are flat: the IFLA_LINKINFO nest comes already encoded (the
    same bytes for every link with the same macvlan settings, see
    :func:`_linkinfo`) and the MAC as bytes. The encoded message is the same.
    """

    fields = ifinfmsg.fields
    nla_map = (
        (1, "IFLA_ADDRESS", "cdata"),
        (3, "IFLA_IFNAME", "asciiz"),
        (4, "IFLA_MTU", "uint32"),
        (5, "IFLA_LINK", "uint32"),
        (13, "IFLA_TXQLEN", "uint32"),
        (18, "IFLA_LINKINFO", "cdata"),
        (28, "IFLA_NET_NS_FD", "uint32"),
    )

CLONE_NEWNET = 0x40000000
IFF_UP = 0x1
RT_TABLE_LOCAL = 255
RTPROT_KERNEL = 2
MACADDR_SET = 3
NLA_HDRLEN = 4  # struct nlattr
RTEXT_FILTER_SKIP_STATS = 1 << 3  # IFLA_EXT_MASK: no IFLA_STATS/IFLA_STATS64 in link replies
NLM_F_NEW = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    import ctypes  # only here: ~3 ms of every cold action otherwise

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def entered(netns_fd: int | None) -> Iterator[None]:
    """Run the block in the netns ``netns_fd`` (this thread only), then come back."""
    if netns_fd is None:
        yield
        return
    home = open_own()
    try:
        _setns(netns_fd)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def mac_to_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_to_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def ip_to_bytes(family: int, addr: str) -> bytes:
    return socket.inet_pton(family, addr)


def ip_to_str(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw)


def errno_of(exc: NetlinkError) -> int | None:
    """The kernel's errno behind one of our errors, if the kernel refused something."""
    cause = exc.__cause__
    return int(cause.code) if isinstance(cause, _PyrNetlinkError) else None


def _errmsg(exc: BaseException) -> str:
    if isinstance(exc, _PyrNetlinkError):
        return f"{os.strerror(exc.code)} (errno {exc.code})"
    return str(exc)


DUMP_RETRIES = 10
BATCH_BYTES = 32 << 10  # of RTM_NEWLINK requests per send (the socket's send buffer is ~200 kB)
PIPELINE_LINKS = 256  # above this many links, encode them in a thread while the kernel works (~2 batches)
Keep = Callable[[Any], Any]  # a dump's reply -> what to keep of it, or None
Results = list[tuple[pb.macvlan_link, NetlinkError | None]]  # each link sent, and its error if it failed
KeepGoing = Callable[[], bool] | None  # asked between batches of new links


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
            except _DumpInterrupted as exc:
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
        """Like :meth:`links`, for macvlans only, as :class:`_MacvlanFacts` (read by :func:`to_macvlan`).

        The request asks the kernel for macvlans only (``ip link show type
        macvlan``; Linux 4.15+, older kernels send every link) and no statistics.
        """
        msg = ifinfmsg()
        msg["family"] = socket.AF_UNSPEC
        kind = {"attrs": [("IFLA_INFO_KIND", "macvlan")]}
        msg["attrs"] = [("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS), ("IFLA_LINKINFO", kind)]
        msg_map = self._sock.marshal.msg_map
        msg_map[RTM_NEWLINK] = _MacvlanFacts
        try:
            return self._request(msg, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, keep)
        finally:
            msg_map[RTM_NEWLINK] = ifinfmsg

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
        except _PyrNetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                return None
            raise NetlinkError(f"cannot look up link {name or index}: {_errmsg(exc)}") from exc
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
        except _PyrNetlinkError:
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

        Beyond ``PIPELINE_LINKS`` links a thread encodes the requests while the
        kernel makes the links of the batch sent before (``sendto`` runs without
        the GIL): pyroute2's encoding and the kernel's work overlap.
        """
        requests = ((link, _encode(_macvlan_msg(link, index, target_fd))) for link, index in items)
        return self._create(_ahead(requests) if len(items) > PIPELINE_LINKS else requests, keep_going)

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
                        errors[seq] = NetlinkError(_errmsg(failed))
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
        except _PyrNetlinkError as exc:
            raise NetlinkError(f"cannot set link {index} up: {_errmsg(exc)}") from exc

    def delete_link(self, index: int) -> bool:
        """Delete link ``index``; ``False`` if it was already gone."""
        msg = ifinfmsg()
        msg["family"] = socket.AF_UNSPEC
        msg["index"] = index
        try:
            self._request(msg, RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK)
        except _PyrNetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise NetlinkError(f"cannot delete link {index}: {_errmsg(exc)}") from exc
        return True

    def add_address(self, index: int, addr: pb.macvlan_addr) -> None:
        """Add ``addr`` to link ``index``; an address that is already there is fine."""
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
        try:
            self._request(msg, RTM_NEWADDR, NLM_F_NEW)
        except _PyrNetlinkError as exc:
            if exc.code == errno.EEXIST:
                return
            raise NetlinkError(f"cannot add address {local}/{addr.prefixlen}: {_errmsg(exc)}") from exc

    def add_route(self, index: int, route: pb.macvlan_route) -> None:
        """Add ``route`` via link ``index``; a route that is already there is fine."""
        fam = route.family
        msg = rtmsg()
        msg["family"] = fam
        msg["dst_len"] = route.dst_len
        msg["table"] = route.table if route.table < 256 else 252
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
        try:
            self._request(msg, RTM_NEWROUTE, NLM_F_NEW)
        except _PyrNetlinkError as exc:
            if exc.code == errno.EEXIST:
                return
            where = ip_to_str(fam, route.dst) if route.HasField("dst") else "default"
            raise NetlinkError(f"cannot add route {where}/{route.dst_len}: {_errmsg(exc)}") from exc


T = TypeVar("T")


def _ahead(items: Iterator[T]) -> Iterator[T]:
    """``items``, produced by a thread of their own ahead of the consumer."""
    queue: SimpleQueue[tuple[bool, Any]] = SimpleQueue()  # (done, item or exception)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    break
                queue.put((False, item))
            queue.put((True, None))
        except BaseException as exc:  # handed to the consumer
            queue.put((True, exc))

    thread = threading.Thread(target=produce, name="criu-macvlan-encoder", daemon=True)
    thread.start()
    try:
        while True:
            done, value = queue.get()
            if done:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
        thread.join()


# struct nlmsghdr {u32 len; u16 type; u16 flags; u32 seq; u32 pid}: the per-send part
_NLMSG_TAIL = struct.Struct("=HII")
_NLMSG_TAIL_OFFSET = 6


def _encode(msg: Any) -> bytes:
    """A request encoded by pyroute2, its sequence number and port id still to be set."""
    msg.encode()
    return bytes(msg.data)


class PreparedMacvlans:
    """RTM_NEWLINK requests encoded before their target netns exists (RPC mode: while CRIU starts).

    A request names its target netns by an fd number (IFLA_NET_NS_FD). These name
    :attr:`slot`, an fd reserved here; :meth:`Rtnl.create_prepared` makes that
    number the real netns (``dup2``), so the encoded bytes go out unchanged.
    """

    def __init__(self, items: Sequence[tuple[pb.macvlan_link, int]]) -> None:
        self.slot = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.parents = [index for _, index in items]
        self.requests = [(link, _encode(_macvlan_msg(link, index, self.slot))) for link, index in items]

    def close(self) -> None:
        if self.slot >= 0:
            os.close(self.slot)
            self.slot = -1

    def __del__(self) -> None:  # a restore that failed before setup-namespaces: no fd leak in a long-lived engine
        self.close()


def _macvlan_msg(link: pb.macvlan_link, parent_index: int, target_fd: int) -> Any:
    """The RTM_NEWLINK request that makes ``link`` in ``target_fd`` on ``parent_index``."""
    msg = _NewMacvlanMsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = link.ifindex
    attrs: list[tuple[str, Any]] = [
        ("IFLA_IFNAME", link.name),
        ("IFLA_ADDRESS", link.address),
        ("IFLA_MTU", link.mtu),
        ("IFLA_LINK", parent_index),
        ("IFLA_NET_NS_FD", target_fd),
        ("IFLA_LINKINFO", _linkinfo(_macvlan_settings(link))),
    ]
    if link.HasField("txqlen"):
        attrs.append(("IFLA_TXQLEN", link.txqlen))
    msg["attrs"] = attrs
    msg["header"]["type"] = RTM_NEWLINK
    msg["header"]["flags"] = NLM_F_NEW
    return msg


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


IFA_F_NODAD = 0x02
IFA_F_PERMANENT = 0x80
FOREVER = 0xFFFFFFFF
# IFA_PROTO values of the addresses the kernel makes itself (loopback, IPv6
# link-local, IPv6 autoconf from router advertisements): never saved.
IFAPROT_KERNEL = (1, 2, 3)


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


def _is_kernel_route(route: pb.macvlan_route) -> bool:
    """Routes the kernel makes itself when an address is added or a link goes up.

    Its ``local`` table (local, broadcast, IPv6 anycast and multicast routes) and
    every ``proto kernel`` route: the IPv4/IPv6 prefix routes of addresses and
    IPv6's ``fe80::/64``, in whatever table the kernel put them. Routes a user or a
    daemon added (``proto boot``/``static``/``dhcp``/``ra``/...) are kept in every
    other table, the main one and numbered ones alike.
    """
    return bool(route.table == RT_TABLE_LOCAL or route.protocol == RTPROT_KERNEL)


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
                return None if _is_kernel_route(route) else (owner, route)

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


def describe_link(msg: Any) -> dict[str, Any]:
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


# ------------------------------------------------------------------ lab links
# Veth pairs and bridges for simulated hosts (the demo); the plugin never makes these.


def _new_link(rtnl: Rtnl, attrs: list[tuple[str, Any]], what: str) -> None:
    msg = ifinfmsg()
    msg["family"] = socket.AF_UNSPEC
    msg["attrs"] = attrs
    try:
        rtnl._request(msg, RTM_NEWLINK, NLM_F_NEW)
    except _PyrNetlinkError as exc:
        raise NetlinkError(f"cannot create {what}: {_errmsg(exc)}") from exc


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
    except _PyrNetlinkError as exc:
        raise NetlinkError(f"cannot put {name} into {master}: {_errmsg(exc)}") from exc


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
