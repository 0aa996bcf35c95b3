"""Empty-netns mode (criu --empty-ns net, as runc always uses): the plugin restores L3 itself.

Real criu, real links: a tree serving TCP on its macvlan's v4 and v6 addresses is
dumped and restored onto another parent of the same L2 segment; a peer netns on
that segment must reach the restored listening sockets at once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import ACTION_SCRIPT, Net, Procs, alive, criu, ip, link_names
from segment import (
    SERVER,
    V4,
    V6,
    Segment,
    addresses,
    configure_l3,
    lifetime,
    netdev_images,
    ours,
    routes,
    wait_listening,
)

from criu_macvlan import images as img

pytestmark = pytest.mark.integration

SCRIPT = ["--action-script", str(ACTION_SCRIPT)]


def link(pid: int, name: str) -> dict[str, object]:
    data = json.loads(ip("-j", "-d", "link", "show", "dev", name, pid=pid))[0]
    return {k: data.get(k) for k in ("ifindex", "address", "mtu", "link_index")} | {"up": "UP" in data["flags"]}


def assert_back_on(seg: Segment, new: int, link_before: dict[str, object], addrs_before: object) -> None:
    """The restored listeners answer at once, on the other parent, with the same link and addresses."""
    assert alive(new)
    assert seg.ask(V4, wait=3) == f"pong {V4}"
    assert seg.ask(V6, wait=3) == f"pong {V6}"
    after = link(new, "mvb")
    assert after["link_index"] == json.loads(ip("-j", "link", "show", "dev", seg.b))[0]["ifindex"]
    assert {k: v for k, v in after.items() if k != "link_index"} == {
        k: v for k, v in link_before.items() if k != "link_index"
    }
    assert addresses(new, "mvb") == addrs_before  # each once: nobody restored anything twice


@dataclass
class Listening:
    """A tree serving TCP on its macvlan (on ``seg.a``), and the state a restore must bring back."""

    seg: Segment
    pid: int
    host_before: set[str]
    link_before: dict[str, object]
    addrs_before: list[tuple[Any, ...]]
    routes_before: list[tuple[Any, ...]]


def start_listening(net: Net, procs: Procs) -> Listening:
    seg = Segment(net, procs)
    host_before = link_names()
    pid = procs.tree("python3", "-c", SERVER)
    configure_l3(net, pid, seg.a)
    wait_listening(seg)
    return Listening(seg, pid, host_before, link(pid, "mvb"), addresses(pid, "mvb"), routes(pid))


@pytest.mark.parametrize(
    ("dump_empty", "restore_empty"),
    [(True, True), (False, True), (True, False), (False, False)],
    ids=["empty-empty", "managed-dump-empty-restore", "empty-dump-plain-restore", "managed-managed"],
)
def test_l3_and_tcp_listener_survive(
    net: Net, procs: Procs, images: Path, inet_env: dict[str, str], dump_empty: bool, restore_empty: bool
) -> None:
    svc = start_listening(net, procs)
    seg, pid, host_before = svc.seg, svc.pid, svc.host_before
    link_before, addrs_before, routes_before = svc.link_before, svc.addrs_before, svc.routes_before

    empty = ["--empty-ns", "net"]
    criu("dump", "-t", str(pid), *SCRIPT, *(empty if dump_empty else []), images=images, log="dump.log", env=inet_env)
    assert not alive(pid)
    assert bool(netdev_images(images)) is not dump_empty  # criu saved no netdev image with --empty-ns net
    fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sidecar = img.load(fd)
    finally:
        os.close(fd)
    assert sidecar is not None
    assert sidecar.head.empty_ns is dump_empty
    saved = sidecar.links[0]
    assert not [a for a in saved.addrs if a.address[:2] == b"\xfe\x80"], "kernel-made link-local saved"
    assert len(saved.addrs) == 4 and len(saved.routes) == 5, (saved.addrs, saved.routes)

    pidfile = images / "restored.pid"
    criu(
        "restore", "-d", "--pidfile", str(pidfile), *SCRIPT, *(empty if restore_empty else []),
        f"--external=macvlan[mvb]:{seg.b}", images=images, log="restore.log", env=inet_env,
    )
    new = procs.adopt(int(pidfile.read_text()))
    assert_back_on(seg, new, link_before, addrs_before)
    routes_after = routes(new)
    if not dump_empty and not restore_empty:
        # CRIU restored L3 itself: its "ip route save" covers the main table only,
        # so the table-100 route is CRIU's known loss (docs/empty-ns.md), not ours.
        lost = [r for r in routes_before if r[5] == "100"]
        assert len(lost) == 1
        routes_before = [r for r in routes_before if r not in lost]
    assert routes_after == routes_before, (set(routes_before) ^ set(routes_after))
    valid, preferred = lifetime(new, "mvb", "10.233.0.2")
    assert 900 < valid <= 1000 and 400 < preferred <= 500
    log = (images / "restore.log").read_text()
    assert "Error (" not in log.replace("Error (criu/util.c", "")  # rlimit noise aside

    procs.cleanup()
    assert ours(link_names()) == ours(host_before)


def test_repeated_setup_namespaces_in_empty_mode(net: Net, procs: Procs, images: Path, tmp_path: Path) -> None:
    """Every action delivered twice (engines may): the second L3 pass changes nothing and fails nothing."""
    seg = Segment(net, procs)
    pid = procs.tree()
    configure_l3(net, pid, seg.a)
    addrs_before, routes_before = addresses(pid, "mvb"), routes(pid)
    twice = tmp_path / "twice.sh"
    twice.write_text(f"#!/bin/sh\n{ACTION_SCRIPT} && exec {ACTION_SCRIPT}\n")
    twice.chmod(0o755)
    criu("dump", "-t", str(pid), "--action-script", str(twice), "--empty-ns", "net", images=images, log="dump.log")
    pidfile = images / "restored.pid"
    criu(
        "restore", "-d", "--pidfile", str(pidfile), "--action-script", str(twice), "--empty-ns", "net",
        f"--external=macvlan[mvb]:{seg.b}", images=images, log="restore.log",
    )
    new = procs.adopt(int(pidfile.read_text()))
    assert addresses(new, "mvb") == addrs_before
    assert routes(new) == routes_before


def test_other_links_are_left_alone(net: Net, procs: Procs, images: Path) -> None:
    """A veth in the tree's netns is not ours: in empty-netns mode it is simply not recreated."""
    seg = Segment(net, procs)
    pid = procs.tree()
    configure_l3(net, pid, seg.a)
    veth = net.name("ve")
    ip("link", "add", veth, "type", "veth", "peer", "name", veth + "x", "netns", str(pid))
    net.created.append(veth)
    criu("dump", "-t", str(pid), *SCRIPT, "--empty-ns", "net", images=images, log="dump.log")
    pidfile = images / "restored.pid"
    criu(
        "restore", "-d", "--pidfile", str(pidfile), *SCRIPT, "--empty-ns", "net",
        f"--external=macvlan[mvb]:{seg.b}", images=images, log="restore.log",
    )
    new = procs.adopt(int(pidfile.read_text()))
    assert link_names(new) == {"lo", "mvb"}


def test_rpc_empty_ns_tcp_listener_survives(
    net: Net, procs: Procs, images: Path, inet_env: dict[str, str]
) -> None:
    """The engine view: dump and restore over RPC with opts.empty_ns = CLONE_NEWNET, hooks in-process."""
    from helpers import CRIU

    from criu_macvlan.rpc import Criu

    svc = start_listening(net, procs)
    seg, pid, host_before = svc.seg, svc.pid, svc.host_before
    link_before, addrs_before, routes_before = svc.link_before, svc.addrs_before, svc.routes_before

    driver = Criu(criu_bin=CRIU, env=inet_env)  # criu swrk: with the compat shim if it needs one
    driver.dump(pid, str(images), empty_ns_net=True, log_file="dump.log", log_level=4)
    assert not alive(pid)
    assert not netdev_images(images)
    new = procs.adopt(driver.restore(str(images), {"mvb": seg.b}, empty_ns_net=True, log_file="restore.log"))
    assert_back_on(seg, new, link_before, addrs_before)
    assert routes(new) == routes_before
    procs.cleanup()
    assert ours(link_names()) == ours(host_before)
