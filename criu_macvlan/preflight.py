"""``criu-macvlan check``: will a restore of these images work on this host? Changes nothing.

What can be known before the restored netns exists:

* the images: the sidecar decodes; CRIU's netdev entries agree with it (no native
  MACVLAN entry left, every link converted);
* the mappings: every link has one (unknown ones are warnings);
* each parent, in this host's (the restoring process's) netns: exists, is up, its
  MTU fits the link's, its MAC differs from the link's, no macvlan in any network
  namespace (see :func:`mac_users`) already uses the link's MAC on it (the kernel
  refuses a second one when the link comes up), and a passthru link gets it alone;
* the new netns: its other devices are the entries CRIU restores from its netdev
  image (``lo`` only with ``--empty-ns net``): none may have a link's name or
  ifindex. With ``netns`` (restoring into an existing netns, ``join_ns``) that
  netns's links are checked instead.

Every problem is listed, not only the first.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import images, netdev
from . import macvlan_pb2 as pb
from . import netns as nsutil
from .errors import CriuMacvlanError, ImageError
from .mappings import format_mapping

if TYPE_CHECKING:
    from .netlink.codec import LinkFacts

PASSTHRU = 8
NAMED_NETNS = "/run/netns"
MAX_NETNS = 4096  # namespaces looked into for a MAC clash, at most


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    links: int = 0


def _netdev_devices(dir_fd: int, rep: Report) -> tuple[dict[str, netdev.NetdevSummary], list[tuple[str, int, bool]]]:
    """Summaries per netdev image, and every device ``(name, ifindex, is_converted_macvlan)``."""
    summaries: dict[str, netdev.NetdevSummary] = {}
    devices: list[tuple[str, int, bool]] = []
    for name in netdev.netdev_images(dir_fd):
        try:
            summaries[name] = summary = netdev.summarize_netdev(dir_fd, name)
        except ImageError as exc:
            rep.problems.append(str(exc))
            continue
        converted = set(summary.converted)
        devices += [(n, i, (n, i) in converted) for n, i in summary.devices]
    return summaries, devices


def check(images_dir: str, mappings: dict[str, str], netns: str | None = None) -> Report:
    rep = Report()
    try:
        dir_fd = os.open(images_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        rep.problems.append(f"cannot open images directory {images_dir}: {exc.strerror}")
        return rep
    try:
        _check_images(dir_fd, images_dir, mappings, netns, rep)
    finally:
        os.close(dir_fd)
    return rep


def _check_images(dir_fd: int, path: str, mappings: dict[str, str], netns: str | None, rep: Report) -> None:
    try:
        sidecar = images.load(dir_fd)
    except ImageError as exc:
        rep.problems.append(str(exc))
        return
    summaries, devices = _netdev_devices(dir_fd, rep)
    if sidecar is None:
        native = [f"{n} ({img})" for img, s in summaries.items() for n, _ in s.native]
        converted = [f"{n} ({img})" for img, s in summaries.items() for n, _ in s.converted]
        if converted:
            rep.problems.append(f"{images.SIDECAR} is missing but the netdev images expect criu-macvlan to "
                                f"create {', '.join(converted)}")
        if native:
            rep.warnings.append(f"no {images.SIDECAR}: native macvlan entries {', '.join(native)} are CRIU's to "
                                f"restore; run 'criu-macvlan convert {path}' to restore them with criu-macvlan")
        return
    links = sidecar.links
    rep.links = len(links)
    native = [f"{n} ({img})" for img, s in summaries.items() for n, _ in s.native]
    if native:
        rep.problems.append(f"netdev images still hold native macvlan entries {', '.join(native)}: "
                            f"run 'criu-macvlan convert {path}'")
    empty = sidecar.head.empty_ns or not summaries
    if summaries:
        known = {key for s in summaries.values() for key in s.converted}
        for link in links:
            if (link.name, link.ifindex) not in known:
                rep.problems.append(f"{link.name}: listed in {images.SIDECAR} but not in CRIU's netdev images")
    for link in links:
        if link.name not in mappings:
            rep.problems.append(f"{link.name}: no parent given (add --macvlan {link.name}:PARENT "
                                f"or --external {format_mapping(link.name, 'PARENT')})")
    for extra in sorted(set(mappings) - {lk.name for lk in links}):
        rep.warnings.append(f"mapping {format_mapping(extra, mappings[extra])} names a link the images do not have")
    from . import netlink

    try:
        with netlink.Rtnl(None) as host:
            _check_parents(links, mappings, host.links(), rep)
        if netns is not None:
            _check_existing_netns(links, netns, rep)
        else:
            others = [(n, i) for n, i, conv in devices if not conv] if not empty else [("lo", 1)]
            _check_clashes(links, others, "the restored netns", rep)
    except CriuMacvlanError as exc:
        rep.problems.append(str(exc))


def _check_parents(links: list[pb.macvlan_link], mappings: dict[str, str], host: list[Any], rep: Report) -> None:
    from .netlink import describe_link, mac_to_str

    infos = [describe_link(m) for m in host]
    by_name: dict[str, LinkFacts] = {i["name"]: i for i in infos}
    on_parent: dict[str, list[pb.macvlan_link]] = {}
    for link in links:
        parent = mappings.get(link.name)
        if parent is None:
            continue
        on_parent.setdefault(parent, []).append(link)
        info = by_name.get(parent)
        if info is None:
            rep.problems.append(f"{link.name}: parent {parent!r} does not exist on this host")
            continue
        if not info["up"]:
            rep.problems.append(f"{link.name}: parent {parent!r} is down")
        if info["mtu"] is not None and link.mtu > info["mtu"]:
            rep.problems.append(f"{link.name}: MTU {link.mtu} is above the {info['mtu']} of parent {parent!r}")
        mac = mac_to_str(link.address)
        if link.mode != PASSTHRU and (info["address"] or "").lower() == mac:
            rep.problems.append(f"{link.name}: MAC {mac} is the MAC of parent {parent!r}")
        if link.mode != PASSTHRU:
            users = mac_users(info["index"], mac)
            if users:
                rep.problems.append(f"{link.name}: {clash_text(mac, parent, users)}")
        if link.mode == PASSTHRU:
            users = [o["name"] for o in infos if o["kind"] == "macvlan" and o["link"] == info["index"]]
            if users:
                rep.problems.append(f"{link.name}: passthru needs {parent!r} alone; it has {', '.join(users)}")
    for parent, group in on_parent.items():
        if len(group) > 1 and any(lk.mode == PASSTHRU for lk in group):
            names = ", ".join(lk.name for lk in group)
            rep.problems.append(f"{names}: a passthru macvlan cannot share parent {parent!r} with others")


def _check_clashes(links: list[pb.macvlan_link], others: list[tuple[str, int]], where: str, rep: Report) -> None:
    for link in links:
        for name, index in others:
            if name == link.name or index == link.ifindex:
                rep.problems.append(
                    f"{link.name} (ifindex {link.ifindex}): clashes with {name!r} (ifindex {index}) in {where}"
                )


def _check_existing_netns(links: list[pb.macvlan_link], netns: str, rep: Report) -> None:
    from .netlink import Rtnl, describe_link

    path = f"/proc/{netns}/ns/net" if netns.isdigit() else netns
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        rep.problems.append(f"cannot open network namespace {path}: {exc.strerror}")
        return
    try:
        with Rtnl(fd) as inside:
            others = [(i["name"], i["index"]) for i in map(describe_link, inside.links())]
    finally:
        os.close(fd)
    _check_clashes(links, others, f"network namespace {path}", rep)


def clash_text(mac: str, parent: str, users: list[str]) -> str:
    by = f"by macvlan {', '.join(users)}" if users else "(by a link none of this host's network namespaces shows)"
    return (f"MAC {mac} is already used on parent {parent!r} {by}: the kernel allows one macvlan per MAC on a "
            "parent, whatever its netns; remove that link or map this one to another parent")


def _other_netns(own: tuple[int, int]) -> Iterator[tuple[str, int]]:
    """``(description, open fd)`` of every network namespace but ``own``: the named ones
    (``ip netns``), then those of processes; each once, at most :data:`MAX_NETNS`."""
    seen = {own}
    candidates: list[tuple[str, str]] = []
    with contextlib.suppress(OSError):
        candidates += [(f"netns {n!r}", f"{NAMED_NETNS}/{n}") for n in sorted(os.listdir(NAMED_NETNS))]
    candidates += [(f"the netns of pid {p}", f"/proc/{p}/ns/net") for p in os.listdir("/proc") if p.isdigit()]
    for what, path in candidates:
        if len(seen) > MAX_NETNS:
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile, or not a netns mount
        key = nsutil.key(fd)
        if key in seen:
            os.close(fd)
            continue
        seen.add(key)
        yield f"{what} (net:[{key[1]}])", fd


def mac_users(parent_index: int, mac: str) -> list[str]:
    """Every macvlan that is up with MAC ``mac`` on the link ``parent_index`` of our netns, in any
    netns: ``'NAME' (ifindex N) in WHERE``."""
    from .netlink import Rtnl

    def facts(msg: Any) -> tuple[str, int, int | None] | None:
        address = msg.get_attr("IFLA_ADDRESS")
        if msg.get_attr("IFLA_LINK") != parent_index or (address or "").lower() != mac.lower() or not msg["flags"] & 1:
            return None  # a link that is down holds no MAC on its parent
        return msg.get_attr("IFLA_IFNAME"), msg["index"], msg.get_attr("IFLA_LINK_NETNSID")

    users = []
    own = nsutil.open_own()
    try:
        with Rtnl(None) as host:
            users += [f"{n!r} (ifindex {i}) in this netns" for n, i, nsid in host.macvlan_links(facts) if nsid is None]
        for where, fd in _other_netns(nsutil.key(own)):
            try:
                with Rtnl(fd) as rtnl:
                    found = rtnl.macvlan_links(facts)
                    ours = rtnl.nsid_of(own) if found else None  # assigned by the dump when a link needs it
                    users += [f"{n!r} (ifindex {i}) in {where}" for n, i, nsid in found if nsid is not None
                              and nsid == ours]
            except CriuMacvlanError:
                continue  # a netns we cannot enter: not ours to judge
            finally:
                os.close(fd)
    finally:
        os.close(own)
    return users
