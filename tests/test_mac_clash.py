"""A MAC already used on the new parent, by a macvlan in another netns: found by check, named at restore."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, Net, Procs, alive, criu, ip, netns_inode, run

pytestmark = pytest.mark.integration

CLI = Path(sys.executable).with_name("criu-macvlan")
SCRIPT = ["--action-script", str(ACTION_SCRIPT)]
MAC = "02:c0:ff:ee:c1:a5"


def dumped_service(net: Net, procs: Procs, images: Path, *extra: str) -> tuple[str, int]:
    """A tree with macvlan eth0 (MAC) on parent A, dumped; and parent B, where a macvlan 'other'
    with the same MAC is up in a third netns. Returns (B, the other netns's pid)."""
    a, b = net.veth("ma"), net.veth("mb")
    pid = procs.tree()
    net.macvlan_into(pid, "eth0", a, "mode", "bridge")
    ip("link", "set", "eth0", "address", MAC, "up", pid=pid)
    ip("addr", "add", "10.78.0.2/24", "dev", "eth0", pid=pid)
    other = procs.tree()
    net.macvlan_into(other, "other", b, "mode", "bridge")
    ip("link", "set", "other", "address", MAC, "up", pid=other)
    criu("dump", "-t", str(pid), *SCRIPT, *extra, images=images, log="dump.log")
    assert not alive(pid)
    return b, other


def named(text: str, b: str, other: int) -> bool:
    """``text`` names the MAC, the parent, the other link and its netns."""
    return (f"MAC {MAC} is already used on parent {b!r} by macvlan 'other' (ifindex " in text
            and f"(net:[{netns_inode(other)}])" in text)


def test_check_finds_the_clash_in_another_netns(net: Net, procs: Procs, images: Path) -> None:
    b, other = dumped_service(net, procs, images)
    res = run(str(CLI), "check", str(images), "--macvlan", f"eth0:{b}", check=False)
    assert res.returncode == 6, res.stdout + res.stderr
    line = next(line for line in res.stderr.splitlines() if "already used" in line)
    assert named(line, b, other)
    ip("link", "set", "other", "down", pid=other)  # a link that is down holds no MAC
    res = run(str(CLI), "check", str(images), "--macvlan", f"eth0:{b}", check=False)
    assert res.returncode == 0, res.stderr


def test_restore_names_the_mac_the_parent_and_the_other_link(net: Net, procs: Procs, images: Path) -> None:
    b, other = dumped_service(net, procs, images)
    res = run(str(CLI), "restore", "-D", str(images), "--macvlan", f"eth0:{b}", "-d", check=False)
    assert res.returncode != 0
    assert named(res.stderr, b, other)


def test_empty_netns_restore_names_them_too(net: Net, procs: Procs, images: Path) -> None:
    b, other = dumped_service(net, procs, images, "--empty-ns", "net")
    res = criu("restore", "-d", *SCRIPT, f"--external=macvlan[eth0]:{b}", "--empty-ns", "net",
               images=images, log="restore.log", check=False)
    assert res.returncode != 0
    line = next(line for line in (images / "restore.log").read_text().splitlines() if "already used" in line)
    assert line.startswith("criu-macvlan-action: setup-namespaces: cannot set macvlan 'eth0' up: ")
    assert named(line, b, other)
