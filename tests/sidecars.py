"""Sidecar builders shared by the image tests, the fuzzers and the seed-corpus generator."""

from __future__ import annotations

import socket

from criu_macvlan import images
from criu_macvlan import macvlan_pb2 as pb


def full_link(i: int = 0, mode: int = 4) -> pb.macvlan_link:
    """A link with every field of the schema set to a non-default value."""
    link = pb.macvlan_link(
        name=f"mv{i}",
        ifindex=10 + i,
        mode=mode,
        flags=1,
        address=bytes([0x02, 0x42, 0xAC, 0x11, 0x00, i & 0xFF]),
        mtu=1400 + i,
        link_flags=0x1003,
        txqlen=500,
        bc_queue_len=1000,
        bc_cutoff=-1,
        netns_id=7,
    )
    if mode == 16:
        link.source_macs.extend([b"\x02\x00\x00\x00\xaa\x01", b"\x02\x00\x00\x00\xaa\x02"])
    link.parent.CopyFrom(
        pb.macvlan_parent(ifindex=3, link_netnsid=0, name="eth0", address=b"\x52\x54\x00\x12\x34\x56", mtu=1500)
    )
    link.addrs.append(
        pb.macvlan_addr(
            family=socket.AF_INET,
            address=socket.inet_pton(socket.AF_INET, f"10.1.{i}.2"),
            prefixlen=24,
            scope=0,
            flags=0x80,
            broadcast=socket.inet_pton(socket.AF_INET, f"10.1.{i}.255"),
            label=f"mv{i}:a",
            valid_lft=3600,
            preferred_lft=1800,
            rt_priority=50,
        )
    )
    link.addrs.append(
        pb.macvlan_addr(
            family=socket.AF_INET6,
            address=socket.inet_pton(socket.AF_INET6, "2001:db8::2"),
            prefixlen=64,
            peer=socket.inet_pton(socket.AF_INET6, "2001:db8::1"),
        )
    )
    link.routes.append(
        pb.macvlan_route(
            family=socket.AF_INET,
            dst_len=0,
            gateway=socket.inet_pton(socket.AF_INET, f"10.1.{i}.1"),
            priority=100,
            table=254,
            scope=0,
            protocol=3,
            prefsrc=socket.inet_pton(socket.AF_INET, f"10.1.{i}.2"),
            type=1,
        )
    )
    link.routes.append(
        pb.macvlan_route(family=socket.AF_INET6, dst_len=48, dst=socket.inet_pton(socket.AF_INET6, "2001:db8:1::"))
    )
    return link


def full_head(empty_ns: bool = True) -> pb.macvlan_head:
    return pb.macvlan_head(version=0, n_links=0, empty_ns=empty_ns, hostname="host-a", netns_inode=4026532000)


def encoded(links: list[pb.macvlan_link], head: pb.macvlan_head | None = None) -> bytes:
    return images.encode(head or full_head(), links)


def valid_samples() -> dict[str, bytes]:
    """Valid sidecars, one per shape the encoder makes."""
    return {
        "no-links": encoded([]),
        "one-link": encoded([full_link(0)]),
        "minimal-link": encoded(
            [pb.macvlan_link(name="m", ifindex=2, mode=1, address=b"\x02" * 6, mtu=68, link_flags=0)],
            pb.macvlan_head(version=0, n_links=0),
        ),
        "every-mode": encoded([full_link(i, mode) for i, mode in enumerate(images.MACVLAN_MODES)]),
        "many-links": encoded([full_link(i) for i in range(64)]),
    }


def netdev_entries() -> list[bytes]:
    """CRIU-made netdev entries: loopback, a veth, a macvlan; unknown fields on the veth and the macvlan."""
    from pycriu.images import netdev_pb2 as nd

    ctl_32 = nd.net_device_entry.DESCRIPTOR.fields_by_name["conf4"].message_type.fields_by_name[
        "type"
    ].enum_type.values_by_name["CTL_32"].number
    lo = nd.net_device_entry(type=nd.LOOPBACK, ifindex=1, mtu=65536, flags=0x49, name="lo")
    lo.conf4.add(type=ctl_32, iarg=0)
    veth = nd.net_device_entry(type=nd.VETH, ifindex=2, mtu=1500, flags=0x1003, name="eth0", address=b"\x02" * 6)
    veth.peer_ifindex = 40
    mv = nd.net_device_entry(type=nd.MACVLAN, ifindex=3, mtu=1400, flags=0x1003, name="mv0", address=b"\x02\x42" * 3)
    mv.macvlan.mode = 4
    mv.macvlan.flags = 1
    mv.conf6.add(type=ctl_32, iarg=1)
    other = nd.net_device_entry(type=nd.MACVLAN, ifindex=4, mtu=1500, flags=0, name="mv1", address=b"\x02" * 6)
    other.macvlan.mode = 2
    unknown = b"\xa0\x3e\x2a" + b"\xaa\x3e\x03xyz"  # field 1000 varint 42, field 1001 bytes "xyz"
    return [lo.SerializeToString(), veth.SerializeToString() + unknown, mv.SerializeToString() + unknown,
            other.SerializeToString()]
