"""The cheaper netlink messages of :mod:`criu_macvlan.netlink` against pyroute2's generic ones.

Unit tests compare bytes and decoded entries with ``ifinfmsg`` built and parsed
the generic way; the integration test reads a real netns through the kernel's
kind filter.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from helpers import Net, Procs, ip

from criu_macvlan import macvlan_pb2 as pb
from criu_macvlan.netlink import codec, compat, rtnl, topology

MAC = bytes.fromhex("02aabbccdd01")


def _links() -> list[pb.macvlan_link]:
    plain = pb.macvlan_link(name="mv0", ifindex=7, mode=4, address=MAC, mtu=1500)
    full = pb.macvlan_link(name="mv1", ifindex=1 << 20, mode=2, address=MAC, mtu=9000, flags=1, txqlen=0)
    full.bc_queue_len = 500
    full.bc_cutoff = -1
    source = pb.macvlan_link(name="mvsrc", ifindex=9, mode=16, address=MAC, mtu=1400)
    source.source_macs.extend([bytes.fromhex("02000000aa01"), bytes.fromhex("02000000aa02")])
    return [plain, full, source]


def _generic_request(link: pb.macvlan_link, parent_index: int, target_fd: int) -> Any:
    """The request as pyroute2's ``ifinfmsg`` encodes it from nested attribute lists."""
    data: list[tuple[str, Any]] = [("IFLA_MACVLAN_MODE", link.mode)]
    if link.HasField("flags"):
        data.append(("IFLA_MACVLAN_FLAGS", link.flags))
    if link.source_macs:
        data.append(("IFLA_MACVLAN_MACADDR_MODE", codec.MACADDR_SET))
        macs = [("IFLA_MACVLAN_MACADDR", codec.mac_to_str(m)) for m in link.source_macs]
        data.append(("IFLA_MACVLAN_MACADDR_DATA", {"attrs": macs}))
    if link.HasField("bc_queue_len"):
        data.append(("IFLA_MACVLAN_BC_QUEUE_LEN", link.bc_queue_len))
    if link.HasField("bc_cutoff"):
        data.append(("IFLA_MACVLAN_BC_CUTOFF", link.bc_cutoff))
    msg = compat.ifinfmsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = link.ifindex
    msg["attrs"] = [
        ("IFLA_IFNAME", link.name),
        ("IFLA_ADDRESS", codec.mac_to_str(link.address)),
        ("IFLA_MTU", link.mtu),
        ("IFLA_LINK", parent_index),
        ("IFLA_NET_NS_FD", target_fd),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "macvlan"), ("IFLA_INFO_DATA", {"attrs": data})]}),
    ]
    if link.HasField("txqlen"):
        msg["attrs"].append(("IFLA_TXQLEN", link.txqlen))
    msg["header"]["type"] = compat.RTM_NEWLINK
    msg["header"]["flags"] = codec.NLM_F_NEW
    return msg


def _encoded(msg: Any, seq: int = 42, pid: int = 4242) -> bytes:
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = pid
    msg.encode()
    return bytes(msg.data)


@pytest.mark.parametrize("link", [*_links(), pb.macvlan_link(name="m" * 15, ifindex=3, mode=8, address=MAC, mtu=68)],
                         ids=lambda lk: lk.name)
def test_create_request_is_the_generic_encoding(link: pb.macvlan_link) -> None:
    """Packed directly, the request is byte for byte pyroute2's ``ifinfmsg`` (its sender sets seq and port)."""
    assert codec.macvlan_request(link, 3, 11) == _encoded(_generic_request(link, 3, 11), seq=0, pid=0)


def test_linkinfo_is_shared_by_links_with_the_same_settings() -> None:
    a, b, _ = _links()
    again = pb.macvlan_link()
    again.CopyFrom(a)
    again.name, again.ifindex = "other", 99
    assert codec._linkinfo(codec._macvlan_settings(again)) is codec._linkinfo(codec._macvlan_settings(a))
    assert codec._macvlan_settings(a) != codec._macvlan_settings(b)


def _reply(link: pb.macvlan_link, kind: str = "macvlan") -> bytes:
    """An RTM_NEWLINK reply as the kernel sends it for ``link``: with attributes a dump never reads."""
    msg = _generic_request(link, 5, 0)
    attrs = [a for a in msg["attrs"] if a[0] != "IFLA_NET_NS_FD"]
    if kind != "macvlan":
        attrs = [a for a in attrs if a[0] != "IFLA_LINKINFO"]
        attrs.append(("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", kind)]}))
    attrs[1:1] = [("IFLA_GROUP", 0), ("IFLA_MAX_MTU", 65535), ("IFLA_QDISC", "noqueue")]
    attrs += [("IFLA_LINK_NETNSID", 0), ("IFLA_BROADCAST", "ff:ff:ff:ff:ff:ff"), ("IFLA_MIN_MTU", 68)]
    msg["attrs"] = attrs
    msg["flags"] = 0x1003
    msg["header"]["flags"] = 2  # NLM_F_MULTI
    return _encoded(msg)


@pytest.mark.parametrize("link", _links(), ids=lambda lk: lk.name)
def test_dump_reply_decodes_like_ifinfmsg(link: pb.macvlan_link) -> None:
    data = _reply(link)
    generic = compat.ifinfmsg(data)
    generic.decode()
    facts = codec.LinkReply(data)
    facts.decode()
    expected = codec.to_macvlan(generic)
    assert expected.name == link.name and expected.parent.link_netnsid == 0 and expected.parent.ifindex == 5
    assert list(expected.source_macs) == list(link.source_macs)
    assert codec.to_macvlan(facts) == expected
    assert codec.link_kind(facts) == "macvlan"
    assert {name for name, _ in codec.LinkReply.kept.values()} >= {a.name for a in facts["attrs"]}
    assert facts.get_attr("IFLA_MAX_MTU") == generic.get_attr("IFLA_MAX_MTU") == 65535
    assert facts.get_attr("IFLA_BROADCAST") is None and generic.get_attr("IFLA_BROADCAST") == "ff:ff:ff:ff:ff:ff"


def test_dump_reply_of_another_kind_is_skipped() -> None:
    veth = codec.LinkReply(_reply(_links()[0], kind="veth"))
    veth.decode()
    assert codec.to_macvlan(veth) is None
    bare = compat.ifinfmsg()
    bare["attrs"] = [("IFLA_IFNAME", "lo")]
    bare["header"]["type"] = compat.RTM_NEWLINK
    plain = codec.LinkReply(_encoded(bare))
    plain.decode()
    assert codec.to_macvlan(plain) is None


@pytest.mark.integration
def test_macvlan_dump_of_a_real_netns(net: Net, procs: Procs) -> None:
    pid = procs.tree("sleep", "1000")
    parent = net.veth()
    net.macvlan_into(pid, "mvk0", parent, "mode", "bridge")
    net.macvlan_into(pid, "mvk1", parent, "mode", "private")
    ip("link", "add", "vk0", "type", "veth", "peer", "name", "vk1", pid=pid)
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with rtnl.Rtnl(fd) as sock:
            facts = sock.macvlan_links()
            full = [m for m in sock.links() if codec.link_kind(m) == "macvlan"]
        assert sorted(m.get_attr("IFLA_IFNAME") for m in facts) == ["mvk0", "mvk1"]
        assert [codec.to_macvlan(m) for m in facts] == [codec.to_macvlan(m) for m in full]
        own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            links = rtnl.read_macvlans(fd, own)
        finally:
            os.close(own)
        assert [(lk.name, lk.mode, lk.parent.name) for lk in links] == [
            ("mvk0", 4, parent),
            ("mvk1", 1, parent),
        ]
    finally:
        os.close(fd)


@pytest.mark.integration
@pytest.mark.parametrize("bad", [1, 3], ids=["middle", "last"])
def test_batch_reports_each_failure_in_place(net: Net, procs: Procs, bad: int) -> None:
    """Only the last request of a batch asks for an ACK; a failed one anywhere still gets its error."""
    pid = procs.tree("sleep", "1000")
    parent = net.veth()
    links = [
        pb.macvlan_link(name=f"mvb{i}", ifindex=100 + i, mode=4, address=MAC[:5] + bytes([i]), mtu=1500)
        for i in range(4)
    ]
    links[bad].name = links[0].name  # the kernel refuses a second link of that name
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with rtnl.Rtnl(None) as host:
            index = topology.index_of(host, parent)
            results = host.create_macvlans([(link, index) for link in links], fd)
            assert host.create_macvlans([], fd) == []
    finally:
        os.close(fd)
    assert [lk.name for lk, _ in results] == [lk.name for lk in links]
    failed = [i for i, (_, error) in enumerate(results) if error is not None]
    assert failed == [bad]
    assert "File exists" in str(results[bad][1])
    made = {f"mvb{i}" for i in range(4) if i != bad}
    assert made <= {line.split(": ")[1].split("@")[0] for line in ip("-o", "link", pid=pid).splitlines()}


def test_prepared_requests_name_their_slot_and_match_the_usual_ones() -> None:
    prepared = rtnl.PreparedMacvlans([(link, 3) for link in _links()])
    try:
        assert prepared.parents == [3, 3, 3]
        for (link, request), original in zip(prepared.requests, _links(), strict=True):
            assert link == original
            generic = _encoded(_generic_request(link, 3, prepared.slot))
            # the same but for the header's flags, sequence number and port id, set when sent
            assert request[:6] == generic[:6] and request[16:] == generic[16:]
    finally:
        prepared.close()
    assert prepared.slot == -1
    prepared.close()  # twice is fine


@pytest.mark.integration
def test_prepared_requests_create_links_in_a_netns_opened_later(net: Net, procs: Procs) -> None:
    """Encoded before the netns is known (RPC restore: while CRIU starts), sent once it is."""
    parent = net.veth()
    with rtnl.Rtnl(None) as host:
        index = topology.index_of(host, parent)
        links = [pb.macvlan_link(name=f"mvp{i}", ifindex=200 + i, mode=4, address=MAC[:5] + bytes([i]), mtu=1500)
                 for i in range(3)]
        prepared = rtnl.PreparedMacvlans([(link, index) for link in links])
        pid = procs.tree("sleep", "1000")
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            results = host.create_prepared(prepared, fd)
        finally:
            os.close(fd)
            prepared.close()
    assert [(lk.name, error) for lk, error in results] == [(f"mvp{i}", None) for i in range(3)]
    lines = ip("-o", "link", pid=pid).splitlines()
    made = {line.split(": ")[1].split("@")[0]: int(line.split(":")[0]) for line in lines}
    assert {name: made.get(name) for name in ("mvp0", "mvp1", "mvp2")} == {"mvp0": 200, "mvp1": 201, "mvp2": 202}
    assert not any(name.startswith("mvp") for name in ip("-o", "link").split())  # not on the host


@pytest.mark.integration
def test_many_links_go_in_several_batches_and_a_failure_stops_the_batches(
    net: Net, procs: Procs
) -> None:
    n = 2 * rtnl.BATCH_BYTES // len(rtnl.macvlan_request(pb.macvlan_link(name="mvq0", address=MAC), 1, 1)) + 50
    pid = procs.tree("sleep", "1000")
    parent = net.veth()
    links = [
        pb.macvlan_link(name=f"mvq{i}", ifindex=1000 + i, mode=4, address=bytes([2, 0, 0, 0, i >> 8, i & 255]),
                        mtu=1500)
        for i in range(n)
    ]
    bad = n - 50
    links[bad].name = links[0].name  # refused by the kernel: File exists
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with rtnl.Rtnl(None) as host:
            results = host.create_macvlans([(link, topology.index_of(host, parent)) for link in links], fd)
    finally:
        os.close(fd)
    failed = [i for i, (_, error) in enumerate(results) if error is not None]
    assert failed == [bad]
    assert [lk.name for lk, _ in results] == [lk.name for lk in links[: len(results)]]
    made = {line.split(": ")[1].split("@")[0] for line in ip("-o", "link", pid=pid).splitlines()}
    assert {"mvq0", f"mvq{bad - 1}"} <= made


def test_prepared_requests_dropped_unused_close_their_slot() -> None:
    prepared = rtnl.PreparedMacvlans([(_links()[0], 3)])
    slot = prepared.slot
    assert os.readlink(f"/proc/self/fd/{slot}") == os.devnull
    del prepared  # a restore that failed before setup-namespaces drops its state
    assert not os.path.exists(f"/proc/self/fd/{slot}")


def test_import_starts_no_process(tmp_path: Path) -> None:
    """pyroute2.config asks ``platform``, which runs ``uname -p`` and ``file``: not while we import it."""
    import subprocess
    import sys

    calls = tmp_path / "calls"
    for tool in ("uname", "file"):
        fake = tmp_path / tool
        fake.write_text(f"#!/bin/sh\necho {tool} >> {calls}\n")
        fake.chmod(0o755)
    code = "import criu_macvlan.netlink; from pyroute2 import config; print(config.machine, config.arch)"
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ.get('PATH', '')}"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [os.uname().machine, f"{8 * struct.calcsize('P')}bit"]
    assert not calls.exists()
