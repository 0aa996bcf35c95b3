"""A runc container in its own user namespace, with a macvlan in its runc-made netns.

The engine flow: ``runc create`` (runc makes the netns), the engine puts a macvlan
into ``/proc/<pid>/ns/net`` and configures it (as CNI does), ``runc start``. runc
checkpoints over CRIU's RPC, always with ``empty_ns = CLONE_NEWNET``, and passes
CRIU a config file (annotation ``org.criu.config``) that holds our action script
and the mappings; the script finds the file from runc itself. ``runc restore``
makes a new netns in the restored user namespace; our ``setup-namespaces`` creates
the macvlan in it from the parent's netns and restores L3 before the tasks run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, Net, Procs, ip, link_names
from runc_bundle import HOST_ID, Runc, fetch, mvb_routes, mvb_state
from segment import V4, V6, Announcements, Segment, addresses, ours

pytestmark = pytest.mark.integration


def test_runc_userns_checkpoint_restore(net: Net, procs: Procs, container: Runc) -> None:
    seg = Segment(net, procs)
    host_before = link_names()
    container.criu_conf.write_text(f"action-script {ACTION_SCRIPT}\nexternal macvlan[mvb]:{seg.b}\n")
    pid = container.start_on(net, seg)
    assert fetch(seg, V6) == "hello from the container"
    before, addrs_before, routes_before = mvb_state(pid)

    container("checkpoint", "--image-path", str(container.images), "--work-path", str(container.work), container.id)
    assert (container.images / "macvlan.img").exists()
    assert not list(container.images.glob("netdev-*.img"))  # runc always dumps with empty_ns = CLONE_NEWNET

    seen = Announcements(seg.b + "p")
    try:
        container(
            "restore", "-d", "--image-path", str(container.images), "--work-path", str(container.work), container.id
        )
        # the plugin announced the MAC on B: gratuitous ARP (request, reply) and NA, round after round
        counts = seen.count(before["address"], V4, V6, rounds=2)
        assert min(counts.values()) >= 2, counts
    finally:
        seen.close()
    new = container.pid()
    assert Path(f"/proc/{new}/uid_map").read_text().split()[:2] == ["0", str(HOST_ID)]
    assert fetch(seg, V4) == "hello from the container"  # the restored listeners, at once
    assert fetch(seg, V6) == "hello from the container"
    after = json.loads(ip("-j", "-d", "link", "show", "dev", "mvb", pid=new))[0]
    for key in ("ifname", "ifindex", "address", "mtu"):
        assert after[key] == before[key], key
    assert after["link_index"] == json.loads(ip("-j", "link", "show", "dev", seg.b))[0]["ifindex"]
    assert addresses(new, "mvb") == addrs_before
    assert mvb_routes(new) == routes_before
    # lo: runc set it up at create; in an empty netns nobody does at restore (docs/empty-ns.md)
    container.destroy()
    assert ours(link_names()) == ours(host_before)
