"""``criu-macvlan convert``: hand macvlan links between CRIU and criu-macvlan, in place.

To criu-macvlan (default): the netdev images' MACVLAN entries become EXTLINK,
so CRIU leaves their creation to our ``setup-namespaces`` hook. Images dumped
without the plugin have no ``macvlan.img``: one is made from CRIU's entries
(name, ifindex, mode, flags, MAC, MTU, link flags; CRIU itself restores the
addresses and routes; the dumped parent and source MACs are unknown).

To native (``--to-native``): the EXTLINK entries that keep a macvlan field go
back to MACVLAN, for a plain ``criu restore --external macvlan[IN]:OUT``. The
sidecar stays: converting again restores the plugin's view, and a restore with
the plugin that meets native entries says so instead of guessing.
"""

from __future__ import annotations

import socket

from . import images, netdev
from . import macvlan_pb2 as pb
from .context import open_images
from .errors import ImageError


def sidecar_from_netdev(dir_fd: int) -> images.Sidecar:
    links = []
    for name in netdev.netdev_images(dir_fd):
        m = netdev.NETDEV_NAME.fullmatch(name)
        for _, e in netdev.iter_netdev(dir_fd, name):
            if e.type != netdev.ND_MACVLAN or not e.HasField("macvlan"):
                continue
            link = pb.macvlan_link(
                name=e.name, ifindex=e.ifindex, mode=e.macvlan.mode,
                address=e.address, mtu=e.mtu, link_flags=e.flags,
            )
            if e.macvlan.HasField("flags"):
                link.flags = e.macvlan.flags
            if m:
                link.netns_id = int(m.group(1))
            links.append(link)
    return images.Sidecar(pb.macvlan_head(hostname=socket.gethostname()), links)


def convert(images_dir: str, to_native: bool = False) -> int:
    """Convert every netdev image in ``images_dir``; the number of entries changed."""
    opened = open_images(images_dir)
    dir_fd = opened.fd
    try:
        netdevs = netdev.netdev_images(dir_fd)
        if not netdevs:
            raise ImageError(f"{images_dir}: no netdev images (not a dump of a netns, or --empty-ns net): "
                             "nothing to convert")
        sidecar = images.load(dir_fd)
        if to_native:
            if sidecar is not None:
                indexes = {lk.ifindex for lk in sidecar.links}
            else:
                indexes = {i for n in netdevs for _, i in netdev.summarize_netdev(dir_fd, n).converted}
            return sum(netdev.convert_netdev(dir_fd, n, indexes, to_native=True) for n in netdevs)
        if sidecar is None:
            sidecar = sidecar_from_netdev(dir_fd)
            if not sidecar.links:
                return 0
            images.write_atomic(dir_fd, images.SIDECAR, images.encode(sidecar.head, sidecar.links))
        indexes = {lk.ifindex for lk in sidecar.links}
        return sum(netdev.convert_netdev(dir_fd, n, indexes) for n in netdevs)
    finally:
        opened.close()
