"""An engine's CRIU (RPC, no notify) runs the action script from a config file: the script
cannot see the client's ``opts.external`` and finds the mapping in /etc/criu/criu-macvlan.conf.

Serving a request, CRIU rewrites its command line to a title (``criu: restore --rpc -D
DIR``): that is how the script knows it runs for an RPC client, and what makes it read the
engine config files and name them in its hint.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ACTION_SCRIPT, CRIU, Net, Procs, alive, ip, unique

pytestmark = pytest.mark.integration
ETC_LOCK = "/run/criu-macvlan-tests-etc.lock"
OUR_CONF = Path("/etc/criu/criu-macvlan.conf")


@pytest.fixture
def etc_conf() -> Iterator[Path]:
    """/etc/criu/criu-macvlan.conf, for this test alone; its old content restored afterwards."""
    with open(ETC_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        made_dir = not OUR_CONF.parent.exists()
        OUR_CONF.parent.mkdir(exist_ok=True)
        old = OUR_CONF.read_bytes() if OUR_CONF.exists() else None
        try:
            yield OUR_CONF
        finally:
            if old is None:
                OUR_CONF.unlink(missing_ok=True)
            else:
                OUR_CONF.write_bytes(old)
            if made_dir:
                with contextlib.suppress(OSError):
                    OUR_CONF.parent.rmdir()


def request(kind: str, images: Path, **opts: Any) -> Any:
    """One raw pycriu request without notify_scripts, as an engine sends it."""
    rpc = importlib.import_module("pycriu.rpc_pb2")
    comm = importlib.import_module("pycriu.criu")._criu_comm_bin(CRIU)
    fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
    try:
        req = rpc.criu_req(type=getattr(rpc, kind))
        req.opts.images_dir_fd = fd
        for key, value in opts.items():
            field = getattr(req.opts, key)
            field.extend(value) if isinstance(value, list) else setattr(req.opts, key, value)
        sk = comm.connect(False)
        try:
            sk.send(req.SerializeToString())
            resp = rpc.criu_resp()
            resp.ParseFromString(sk.recv(4096))
        finally:
            comm.disconnect()
    finally:
        os.close(fd)
    return resp


def test_action_script_of_an_rpc_criu_takes_mappings_from_etc(
    net: Net, procs: Procs, images: Path, tmp_path: Path, etc_conf: Path
) -> None:
    parent = net.veth("pa")
    pid = procs.tree()
    mv = unique("mvr")
    net.macvlan_into(pid, mv, parent, "mode", "bridge")
    conf = tmp_path / "engine.conf"
    conf.write_text(f"action-script {ACTION_SCRIPT}\n")
    external = [f"macvlan[{mv}]:{parent}"]
    with contextlib.suppress(FileNotFoundError):
        etc_conf.unlink()
    resp = request("DUMP", images, pid=pid, log_file="dump.log", log_level=4, config_file=str(conf))
    assert resp.success and (images / "macvlan.img").exists()

    # the client names the parent in opts.external only: out of the script's sight
    resp = request("RESTORE", images, log_file="restore1.log", log_level=4, config_file=str(conf), external=external)
    assert not resp.success
    log = (images / "restore1.log").read_text()
    assert (f"criu-macvlan-action: setup-namespaces: no parent given for macvlan[{mv}]:OUT: add "
            f"'external macvlan[{mv}]:OUT' to /etc/criu/criu-macvlan.conf or the file named by "
            "$CRIU_MACVLAN_CONFIG (an action script cannot see an RPC client's opts.external)") in log

    etc_conf.write_text(f"external macvlan[{mv}]:{parent}\n")
    resp = request("RESTORE", images, log_file="restore2.log", log_level=4, config_file=str(conf), external=external)
    assert resp.success, (images / "restore2.log").read_text()[-3000:]
    new = procs.adopt(resp.restore.pid)
    assert alive(new)
    assert f"{mv}@if{Path(f'/sys/class/net/{parent}/ifindex').read_text().strip()}" in ip("-o", "link", pid=new)
