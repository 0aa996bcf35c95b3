"""The container-engine path: an RPC client that is not ours (raw pycriu, no notify) names
the action script and the macvlan mappings only in a CRIU config file (RPC ``config_file``).

CRIU >= 3.19 runs the config file's action script in RPC mode; the script finds the
mappings in ``$CRIU_MACVLAN_CONFIG``, which ``criu swrk`` inherits from the client
that forked it (pycriu forks and execs criu with the client's environment).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import ACTION_SCRIPT, FourLinks, Net, Procs, alive, engine_request

from criu_macvlan import netdev

pytestmark = pytest.mark.integration


def raw_request(kind: str, images: Path, **opts: Any) -> Any:
    """:func:`engine_request`, which must succeed, with no NOTIFY (an engine without notify gets none)."""
    rpc = importlib.import_module("pycriu.rpc_pb2")
    resp = engine_request(kind, images, **opts)
    assert resp.type == getattr(rpc, kind), "an engine without notify must get no NOTIFY"
    if not resp.success:
        log = images / opts.get("log_file", "criu.log")
        pytest.fail(f"{kind} failed: {resp.cr_errmsg}\n" + "\n".join(log.read_text().splitlines()[-30:]))
    return resp


def test_engine_config_file_dump_restore(
    net: Net, procs: Procs, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = FourLinks.make(net, procs)
    pid, maps = s.pid, s.maps
    conf = tmp_path / "engine.conf"  # what an engine's runc.conf would say
    externals = "".join(f"external macvlan[{k}]:{v}\n" for k, v in maps.items())
    conf.write_text(f"action-script {ACTION_SCRIPT}\n{externals}")
    monkeypatch.setenv("CRIU_MACVLAN_CONFIG", str(conf))

    raw_request("DUMP", images, pid=pid, log_file="dump.log", log_level=4, config_file=str(conf))
    assert not alive(pid)
    assert (images / "macvlan.img").exists()
    dump_log = (images / "dump.log").read_text()
    assert "Running post-dump scripts" in dump_log
    fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
    try:  # CRIU will leave the links to the action script
        summaries = [netdev.summarize_netdev(fd, n) for n in netdev.netdev_images(fd)]
    finally:
        os.close(fd)
    assert sorted(name for x in summaries for name, _ in x.converted) == sorted(maps)
    assert not [e for x in summaries for e in x.native]

    resp = raw_request("RESTORE", images, log_file="restore.log", log_level=4, config_file=str(conf))
    new = procs.adopt(resp.restore.pid)
    assert alive(new)
    s.assert_moved(new)
    s.assert_nothing_left(procs)
