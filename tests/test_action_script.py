"""criu dump/restore --action-script hooks/criu-macvlan-action, with the real criu, links and namespaces."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, SCRIPT, FourLinks, Net, Procs, alive, criu, ip, leaked, link_names, links_json

pytestmark = pytest.mark.integration



def dump(images: Path, pid: int, *extra: str) -> None:
    criu("dump", "-t", str(pid), *SCRIPT, *extra, images=images, log="dump.log")


def restore(images: Path, procs: Procs, *extra: str) -> int:
    pidfile = images / "restored.pid"
    criu("restore", "-d", "--pidfile", str(pidfile), *SCRIPT, *extra, images=images, log="restore.log")
    return procs.adopt(int(pidfile.read_text()))


def test_dump_restore_onto_other_parents(net: Net, procs: Procs, images: Path) -> None:
    s = FourLinks.make(net, procs)
    pid = s.pid
    dump(images, pid)
    assert not alive(pid)
    assert (images / "macvlan.img").exists()
    assert not [n for n in os.listdir(images) if n.startswith(".criu-macvlan")]

    new = restore(images, procs, *[f"--external=macvlan[{k}]:{v}" for k, v in s.maps.items()])
    assert alive(new)
    after = s.assert_moved(new)
    assert "02:00:00:00:aa:01" in after["mvs"]["linkinfo"]["info_data"]["macaddr_data"]
    assert after["mvv"]["linkinfo"]["info_data"]["nopromisc"] is True
    assert "UP" not in after["mvd"]["flags"]
    s.assert_nothing_left(procs)


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
    parent = net.veth("pa")
    host = net.name("mh")
    ip("link", "add", host, "link", parent, "type", "macvlan", "mode", "bridge")
    net.created.append(host)
    pid = procs.tree(net=False)
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
