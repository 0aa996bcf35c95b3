"""The demo's lab: a switch with host A's NIC, host B's NIC and a client, and the service's macvlan.

The switch and the client live in network namespaces held only by file descriptors.
"""

from __future__ import annotations

import ctypes
import os
import socket
from dataclasses import dataclass

from criu_macvlan import macvlan_pb2 as pb
from criu_macvlan import netns as nsutil

from .ui import DemoError

CLONE_NEWNET = 0x40000000
PORT = 7000
SERVICE_MAC = "02:c0:ff:ee:00:02"
SERVICE_IP = "10.99.0.2"
CLIENT_IP = "10.99.0.1"
PREFIX = 24
IFNAME = "eth0"  # the service's macvlan, inside its netns


def _libc_ns_call(name: str, *args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def new_netns() -> int:
    """A new, anonymous network namespace, held by the returned fd alone."""
    home = nsutil.open_own()
    try:
        if hasattr(os, "unshare"):
            os.unshare(CLONE_NEWNET)
        else:  # Python < 3.12
            _libc_ns_call("unshare", CLONE_NEWNET)
        try:
            return nsutil.open_own()
        finally:
            if hasattr(os, "setns"):
                os.setns(home, CLONE_NEWNET)
            else:
                _libc_ns_call("setns", home, CLONE_NEWNET)
    finally:
        os.close(home)


@dataclass
class Lab:
    """Host A's NIC, host B's NIC and the client, on one switch."""

    nic_a: str
    nic_b: str
    switch_fd: int = -1
    client_fd: int = -1

    def build(self) -> None:
        from criu_macvlan import netlink as nl
        from criu_macvlan.netlink import topology

        self.switch_fd = new_netns()
        self.client_fd = new_netns()
        root = nsutil.open_own()
        try:
            with nl.Rtnl(self.switch_fd) as sw:
                topology.add_bridge(sw, "switch")
                topology.add_veth(sw, "port-a", self.nic_a, root)
                topology.add_veth(sw, "port-b", self.nic_b, root)
                topology.add_veth(sw, "port-client", "eth0", self.client_fd)
                for port in ("port-a", "port-b", "port-client"):
                    topology.set_master(sw, port, "switch")
                    sw.set_up(topology.index_of(sw, port))
                sw.set_up(topology.index_of(sw, "switch"))
        finally:
            os.close(root)
        with nl.Rtnl(None) as host:
            for nic in (self.nic_a, self.nic_b):
                host.set_up(topology.index_of(host, nic))
        with nl.Rtnl(self.client_fd) as client:
            index = topology.index_of(client, "eth0")
            client.set_up(index)
            client.add_address(index, _addr(CLIENT_IP))

    def switch_port_of(self, mac: str) -> str | None:
        """The switch port its FDB sends ``mac`` to."""
        from criu_macvlan import netlink as nl
        from criu_macvlan.netlink import topology

        with nl.Rtnl(self.switch_fd) as sw:
            index = topology.fdb_port(sw, mac)
            msg = sw.link(index=index) if index is not None else None
        return None if msg is None else str(msg.get_attr("IFLA_IFNAME"))

    def nic_index(self, name: str) -> int:
        from criu_macvlan import netlink as nl
        from criu_macvlan.netlink import topology

        with nl.Rtnl(None) as host:
            return topology.index_of(host, name)

    def teardown(self) -> None:
        from criu_macvlan import netlink as nl

        with nl.Rtnl(None) as host:
            for nic in (self.nic_a, self.nic_b):
                msg = host.link(name=nic)
                if msg is not None and nl.link_kind(msg) == "veth":
                    host.delete_link(int(msg["index"]))
        for fd in (self.client_fd, self.switch_fd):
            if fd >= 0:
                os.close(fd)
        self.client_fd = self.switch_fd = -1


def _addr(ip: str) -> pb.macvlan_addr:
    return pb.macvlan_addr(family=socket.AF_INET, address=socket.inet_aton(ip), prefixlen=PREFIX)


def quiet_ipv6() -> None:
    """Disable IPv6 in the current netns (the service's; it is IPv4 only).

    Otherwise the restored NIC speaks up as soon as CRIU sets it up (IPv6 DAD and
    MLD) and the switch moves the MAC to host B's port early. CRIU restores the
    addresses before the iptables rules that lock the connection (criu/net.c,
    prepare_net_ns_second_stage), so a client retransmission arriving in that
    window finds the address but no socket and no lock, and is answered with a
    RST. Kept quiet, the MAC moves when the plugin announces it (docs/announce.md):
    at post-setup-namespaces, with the connection locked.
    """
    for conf in ("all", "default"):
        with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w", encoding="ascii") as f:
            f.write("1")


def give_service_a_nic(pid: int, parent: str, ifindex: int = 0) -> None:
    """A macvlan on ``parent`` inside the service's netns: fixed MAC and IP, default route via the client.

    ``ifindex`` 0: the kernel's choice (2, as in a container); native CRIU needs one free on the host.
    """
    from criu_macvlan import netlink as nl
    from criu_macvlan.netlink import topology

    target = nsutil.open_of_pid(pid)
    try:
        with nl.entered(target):  # IPv4 only: see quiet_ipv6()
            quiet_ipv6()
        link = pb.macvlan_link(
            name=IFNAME, ifindex=ifindex, mode=4, address=nl.mac_to_bytes(SERVICE_MAC), mtu=1500, link_flags=0
        )
        with nl.Rtnl(None) as host:
            host.create_macvlan(link, topology.index_of(host, parent), target)
        with nl.Rtnl(target) as inside:
            index = topology.index_of(inside, IFNAME)
            inside.set_up(index)
            inside.add_address(index, _addr(SERVICE_IP))
            default = pb.macvlan_route(
                family=socket.AF_INET, dst_len=0, gateway=socket.inet_aton(CLIENT_IP), table=254, protocol=3
            )
            inside.add_route(index, default)
    finally:
        os.close(target)


def service_nic(pid: int) -> pb.macvlan_link:
    """The service's macvlan as the kernel sees it now (MAC, addresses, routes, parent)."""
    from criu_macvlan import netlink as nl

    target = nsutil.open_of_pid(pid)
    own = nsutil.open_own()
    try:
        links = nl.read_macvlans(target, own)
    finally:
        os.close(target)
        os.close(own)
    found = [link for link in links if link.name == IFNAME]
    if not found:
        raise DemoError(f"process {pid} has no macvlan {IFNAME}")
    return found[0]

