"""An engine's CRIU (RPC, no notify) runs the action script from a config file: the script
cannot see the client's ``opts.external`` and finds the mapping in /etc/criu/criu-macvlan.conf.

Serving a request, CRIU rewrites its command line to a title (``criu: restore --rpc -D
DIR``): that is how the script knows it runs for an RPC client, and what makes it read the
engine config files and name them in its hint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, Net, Procs, alive, engine_request, ip, unique

pytestmark = pytest.mark.integration
OUR_CONF = "/etc/criu/criu-macvlan.conf"


def test_action_script_of_an_rpc_criu_takes_mappings_from_etc(
    net: Net, procs: Procs, images: Path, tmp_path: Path, etc_files: Callable[[str, str], None]
) -> None:
    parent = net.veth("pa")
    pid = procs.tree()
    mv = unique("mvr")
    net.macvlan_into(pid, mv, parent, "mode", "bridge")
    conf = tmp_path / "engine.conf"
    conf.write_text(f"action-script {ACTION_SCRIPT}\n")
    external = [f"macvlan[{mv}]:{parent}"]
    etc_files(OUR_CONF, "")  # no mapping on this host yet
    resp = engine_request("DUMP", images, pid=pid, log_file="dump.log", log_level=4, config_file=str(conf))
    assert resp.success and (images / "macvlan.img").exists()

    # the client names the parent in opts.external only: out of the script's sight
    resp = engine_request("RESTORE", images, log_file="restore1.log", log_level=4, config_file=str(conf),
                          external=external)
    assert not resp.success
    log = (images / "restore1.log").read_text()
    assert (f"criu-macvlan-action: setup-namespaces: no parent given for macvlan[{mv}]:OUT: add "
            f"'external macvlan[{mv}]:OUT' to /etc/criu/criu-macvlan.conf or the file named by "
            "$CRIU_MACVLAN_CONFIG (an action script cannot see an RPC client's opts.external)") in log

    etc_files(OUR_CONF, f"external macvlan[{mv}]:{parent}\n")
    resp = engine_request("RESTORE", images, log_file="restore2.log", log_level=4, config_file=str(conf),
                          external=external)
    assert resp.success, (images / "restore2.log").read_text()[-3000:]
    new = procs.adopt(resp.restore.pid)
    assert alive(new)
    assert f"{mv}@if{Path(f'/sys/class/net/{parent}/ifindex').read_text().strip()}" in ip("-o", "link", pid=new)
