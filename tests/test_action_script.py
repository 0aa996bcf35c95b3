"""criu dump/restore --action-script hooks/criu-macvlan-action, with the real criu, links and namespaces."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from conftest import ACTION_SCRIPT, Net, Procs, alive, criu, ip, leaked, link_names

pytestmark = pytest.mark.integration

SCRIPT = ["--action-script", str(ACTION_SCRIPT)]


def links_json(pid: int | None = None) -> dict[str, dict[str, Any]]:
    out = ip("-j", "-d", "link", "show", pid=pid)
    return {link["ifname"]: link for link in json.loads(out)}


def addrs_json(pid: int) -> dict[str, set[str]]:
    out = ip("-j", "addr", "show", pid=pid)
    result: dict[str, set[str]] = {}
    for link in json.loads(out):
        result[link["ifname"]] = {
            f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("scope") != "link"
        }
    return result


def setup_links(net: Net, pid: int, a1: str, a2: str) -> None:
    """The issue's scenario: four macvlans on two parents, every property that matters."""
    net.macvlan_into(pid, "mvb", a1, "mode", "bridge")
    ip("link", "set", "mvb", "address", "02:42:ac:11:00:02", "mtu", "1400", "up", pid=pid)
    ip("addr", "add", "10.231.0.2/24", "dev", "mvb", pid=pid)
    ip("addr", "add", "2001:db8:231::2/64", "dev", "mvb", "nodad", pid=pid)
    net.macvlan_into(pid, "mvv", a2, "mode", "vepa", flags=1)  # nopromisc
    ip("link", "set", "mvv", "up", pid=pid)
    ip("addr", "add", "10.232.0.2/24", "dev", "mvv", pid=pid)
    net.macvlan_into(pid, "mvd", a1, "mode", "private")  # stays down
    net.macvlan_into(pid, "mvs", a2, "mode", "source")
    ip("link", "set", "mvs", "type", "macvlan", "macaddr", "add", "02:00:00:00:aa:01", pid=pid)
    ip("link", "set", "mvs", "type", "macvlan", "macaddr", "add", "02:00:00:00:aa:02", pid=pid)
    ip("link", "set", "mvs", "up", pid=pid)


def comparable(link: dict[str, Any]) -> dict[str, Any]:
    data = link["linkinfo"].get("info_data", {})
    return {
        "ifindex": link["ifindex"],
        "address": link["address"],
        "mtu": link["mtu"],
        "up": "UP" in link["flags"],
        "txqlen": link.get("txqlen"),
        "mode": data.get("mode"),
        "nopromisc": data.get("nopromisc", False),
        "nodst": data.get("nodst", False),
        "macaddr": sorted(data.get("macaddr_data", [])),
        "bcqueuelen": data.get("bcqueuelen"),
    }


def assert_moved(new: int, before: dict[str, dict[str, Any]], addrs_before: dict[str, set[str]],
                 parents: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Tree ``new`` has each link of ``parents`` as it was ``before``, now on that parent, and the same addresses.

    Returns the restored links (``links_json(new)``).
    """
    after, host = links_json(new), links_json()
    for name, parent in parents.items():
        assert comparable(after[name]) == comparable(before[name]), name
        assert after[name]["link_index"] == host[parent]["ifindex"], f"{name} not on {parent}"
    assert addrs_json(new) == addrs_before
    return after


def dump(images: Path, pid: int, *extra: str) -> None:
    criu("dump", "-t", str(pid), *SCRIPT, *extra, images=images, log="dump.log")


def restore(images: Path, procs: Procs, *extra: str) -> int:
    pidfile = images / "restored.pid"
    criu("restore", "-d", "--pidfile", str(pidfile), *SCRIPT, *extra, images=images, log="restore.log")
    return procs.adopt(int(pidfile.read_text()))


def test_dump_restore_onto_other_parents(net: Net, procs: Procs, images: Path) -> None:
    a1, a2, b1, b2 = net.veth("pa"), net.veth("pa"), net.veth("pb"), net.veth("pb")
    host_before = link_names()
    pid = procs.tree()
    setup_links(net, pid, a1, a2)
    before = links_json(pid)
    addrs_before = addrs_json(pid)

    dump(images, pid)
    assert not alive(pid)
    assert (images / "macvlan.img").exists()
    assert not [n for n in os.listdir(images) if n.startswith(".criu-macvlan")]

    maps = {"mvb": b1, "mvd": b1, "mvv": b2, "mvs": b2}
    new = restore(images, procs, *[f"--external=macvlan[{k}]:{v}" for k, v in maps.items()])
    assert alive(new)
    after = assert_moved(new, before, addrs_before, maps)
    assert "02:00:00:00:aa:01" in after["mvs"]["linkinfo"]["info_data"]["macaddr_data"]
    assert after["mvv"]["linkinfo"]["info_data"]["nopromisc"] is True
    assert "UP" not in after["mvd"]["flags"]

    procs.cleanup()
    assert not leaked(host_before)  # nothing of ours left in the host netns


def test_missing_mapping_fails_cleanly(net: Net, procs: Procs, images: Path) -> None:
    a1, b1 = net.veth("pa"), net.veth("pb")
    pid = procs.tree()
    net.macvlan_into(pid, "mv0", a1, "mode", "bridge")
    net.macvlan_into(pid, "mv1", a1, "mode", "bridge")
    dump(images, pid)
    host_before = link_names()
    pidfile = images / "restored.pid"
    res = criu(
        "restore", "-d", "--pidfile", str(pidfile), *SCRIPT, "--external", f"macvlan[mv0]:{b1}",
        images=images, log="restore.log", check=False,
    )
    assert res.returncode != 0
    log = (images / "restore.log").read_text()
    assert "criu-macvlan-action: setup-namespaces: no parent given for macvlan[mv1]:OUT" in log
    assert not pidfile.exists()
    assert not leaked(host_before)


def test_tree_in_host_netns_is_left_alone(net: Net, procs: Procs, images: Path) -> None:
    """A tree without a netns of its own has no macvlan of ours: save nothing, touch nothing."""
    import subprocess

    parent = net.veth("pa")
    host = net.name("mh")
    ip("link", "add", host, "link", parent, "type", "macvlan", "mode", "bridge")
    net.created.append(host)
    p = subprocess.Popen(
        ["unshare", "--pid", "--fork", "setsid", "sleep", "100000"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    procs.popens.append(p)
    children = Path(f"/proc/{p.pid}/task/{p.pid}/children")
    while not children.exists() or not children.read_text().split():
        pass
    pid = procs.adopt(int(children.read_text().split()[0]))
    before = links_json()[host]
    dump(images, pid, "--leave-running", "--external", f"net[{os.stat('/proc/self/ns/net').st_ino}]:host")
    assert not (images / "macvlan.img").exists()
    assert links_json()[host]["ifindex"] == before["ifindex"]


def test_config_file_mappings_and_repeated_actions(net: Net, procs: Procs, images: Path, tmp_path: Path) -> None:
    """Mappings from a CRIU config file (--config); every hook delivered twice changes nothing."""
    a1, b1 = net.veth("pa"), net.veth("pb")
    pid = procs.tree()
    net.macvlan_into(pid, "mv0", a1, "mode", "bridge")
    ip("link", "set", "mv0", "up", pid=pid)
    twice = tmp_path / "twice.sh"
    twice.write_text(f"#!/bin/sh\n{ACTION_SCRIPT} && exec {ACTION_SCRIPT}\n")
    twice.chmod(0o755)
    conf = tmp_path / "criu.conf"
    conf.write_text(f"# criu-macvlan test\naction-script {twice}\nexternal macvlan[mv0]:{b1}\n")
    criu("dump", "-t", str(pid), "--config", str(conf), images=images, log="dump.log")
    pidfile = images / "restored.pid"
    criu("restore", "-d", "--pidfile", str(pidfile), "--config", str(conf), images=images, log="restore.log")
    new = procs.adopt(int(pidfile.read_text()))
    link = links_json(new)["mv0"]
    assert link["link_index"] == links_json()[b1]["ifindex"]
    assert "UP" in link["flags"]


def test_post_dump_keeps_the_modes_criu_gave_its_images(net: Net, procs: Procs, images: Path) -> None:
    # A restore in a user namespace opens netdev-<id>.img as the container's host uid
    # (CRIU's zdtm static/macvlan, flavor uns, restores that way): the rewritten file
    # keeps CRIU's mode and owner, and macvlan.img gets the mode CRIU gives its images.
    parent = net.veth()
    pid = procs.tree()
    net.macvlan_into(pid, "mvb", parent, "mode", "bridge")
    dump(images, pid)
    modes = {img.name: (stat.S_IMODE(img.stat().st_mode), img.stat().st_uid) for img in images.glob("*.img")}
    umask = os.umask(0)
    os.umask(umask)
    assert "macvlan.img" in modes and any(name.startswith("netdev-") for name in modes)
    assert set(modes.values()) == {(0o644 & ~umask, 0)}, modes
