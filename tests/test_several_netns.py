"""A tree with a second network namespace: macvlans there are refused at dump, never silently lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, Net, Procs, alive, criu, ip, link_names, netns_inode

pytestmark = pytest.mark.integration
SCRIPT = ["--action-script", str(ACTION_SCRIPT)]


def two_netns_tree(procs: Procs) -> tuple[int, int]:
    """Root (own netns) with a child that unshared a second netns; returns (root, child)."""
    root = procs.tree("sh", "-c", "unshare --net sleep 100000 & exec sleep 100000")
    children = Path(f"/proc/{root}/task/{root}/children")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = children.read_text().split()
        if kids and netns_inode(kids[0]) != netns_inode(root):
            return root, int(kids[0])
        time.sleep(0.02)
    raise RuntimeError("the child did not get its own netns")


@pytest.mark.parametrize("empty", [False, True], ids=["managed", "empty-ns"])
def test_macvlan_in_second_netns_is_refused(net: Net, procs: Procs, images: Path, empty: bool) -> None:
    a = net.veth("pa")
    root, child = two_netns_tree(procs)
    net.macvlan_into(root, "mv0", a, "mode", "bridge")
    net.macvlan_into(child, "mvx", a, "mode", "bridge")
    res = criu(
        "dump", "-t", str(root), *SCRIPT, *(["--empty-ns", "net"] if empty else []),
        images=images, log="dump.log", check=False,
    )
    assert res.returncode != 0
    log = (images / "dump.log").read_text()
    assert (
        f"process {child} of tree {root} is in a second network namespace (net:[{netns_inode(child)}]) "
        "with macvlan mvx" in log
    )
    assert alive(root) and alive(child)  # refused before the freeze: the tree runs on
    assert not (images / "macvlan.img").exists()
    assert not list(images.glob(".criu-macvlan*"))


def test_second_netns_without_macvlan_is_fine(net: Net, procs: Procs, images: Path) -> None:
    a, b = net.veth("pa"), net.veth("pb")
    root, child = two_netns_tree(procs)
    net.macvlan_into(root, "mv0", a, "mode", "bridge")
    ip("link", "set", "lo", "up", pid=child)
    criu("dump", "-t", str(root), *SCRIPT, images=images, log="dump.log")
    pidfile = images / "restored.pid"
    criu(
        "restore", "-d", "--pidfile", str(pidfile), *SCRIPT, f"--external=macvlan[mv0]:{b}",
        images=images, log="restore.log",
    )
    new = procs.adopt(int(pidfile.read_text()))
    assert "mv0" in link_names(new)
    kids = Path(f"/proc/{new}/task/{new}/children").read_text().split()
    assert kids and netns_inode(kids[0]) != netns_inode(new)
    assert link_names(int(kids[0])) == {"lo"}


def test_macvlan_in_second_netns_is_refused_over_rpc(net: Net, procs: Procs, images: Path) -> None:
    """Over RPC the netns is read before CRIU's first notification: the refusal still comes at pre-dump."""
    from criu_macvlan.errors import HookError
    from criu_macvlan.rpc import Criu

    a = net.veth("pa")
    root, child = two_netns_tree(procs)
    net.macvlan_into(root, "mv0", a, "mode", "bridge")
    net.macvlan_into(child, "mvx", a, "mode", "bridge")
    with pytest.raises(HookError) as err:
        Criu().dump(root, str(images), log_file="dump.log")
    assert str(err.value).startswith(f"pre-dump: process {child} of tree {root} is in a second network namespace")
    assert alive(root) and alive(child)
    assert not (images / "macvlan.img").exists()
    assert not list(images.glob(".criu-macvlan*"))
