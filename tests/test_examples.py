"""The examples in examples/, used for real so they cannot rot: the CRIU config, the RPC script, the plugin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, CRIU, REPO, Net, Procs, alive, criu, ip, run

pytestmark = pytest.mark.integration

EXAMPLES = REPO / "examples"


def parent_index(pid: int, name: str) -> int:
    link = {lk["ifname"]: lk for lk in json.loads(ip("-j", "link", "show", pid=pid))}[name]
    return int(link["link_index"])


def host_index(name: str) -> int:
    return int(json.loads(ip("-j", "link", "show", name))[0]["ifindex"])


def tree_with_macvlan(net: Net, procs: Procs, parent: str, name: str = "eth0") -> int:
    pid = procs.tree()
    net.macvlan_into(pid, name, parent, "mode", "bridge")
    ip("link", "set", name, "up", pid=pid)
    ip("addr", "add", "10.98.0.2/24", "dev", name, pid=pid)
    return pid


def test_criu_conf_with_real_criu(net: Net, procs: Procs, images: Path, tmp_path: Path) -> None:
    """examples/criu.conf as given, with only the script path and the NIC name made local."""
    a1, b1 = net.veth("pa"), net.veth("pb")
    lines = (EXAMPLES / "criu.conf").read_text().splitlines()
    options = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert options == [
        "action-script /usr/local/bin/criu-macvlan-action",
        "external macvlan[eth0]:enp3s0",
        "tcp-established",
    ]
    local = [
        line.replace("/usr/local/bin/criu-macvlan-action", str(ACTION_SCRIPT)).replace(":enp3s0", f":{b1}")
        for line in lines
    ]
    conf = tmp_path / "criu-macvlan.conf"
    conf.write_text("\n".join(local) + "\n")

    pid = tree_with_macvlan(net, procs, a1)
    criu("dump", "-t", str(pid), "--config", str(conf), images=images, log="dump.log")
    assert not alive(pid)
    assert (images / "macvlan.img").exists()
    pidfile = images / "restored.pid"
    criu("restore", "-d", "--pidfile", str(pidfile), "--config", str(conf), images=images, log="restore.log")
    new = procs.adopt(int(pidfile.read_text()))
    assert parent_index(new, "eth0") == host_index(b1)
    assert "10.98.0.2/24" in ip("-o", "addr", "show", "eth0", pid=new)


def test_rpc_notify_script(net: Net, procs: Procs, images: Path) -> None:
    """examples/rpc_notify.py dumps and restores through the RPC driver; its callbacks see every stage."""
    a1, b1 = net.veth("pa"), net.veth("pb")
    pid = tree_with_macvlan(net, procs, a1)
    script = [sys.executable, str(EXAMPLES / "rpc_notify.py"), "--criu", CRIU]

    dumped = run(*script, "dump", str(pid), str(images))
    assert not alive(pid)
    actions = [line.split()[1] for line in dumped.stdout.splitlines() if line.startswith("+")]
    assert actions == ["pre-dump", "network-lock", "post-dump"]
    assert dumped.stdout.splitlines()[-1] == f"dumped {pid} into {images}"

    bad = run(*script, "restore", str(images), f"eth0={b1}", check=False)  # the CLI's IN:OUT, not IN=OUT
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"rpc_notify: bad mapping 'eth0={b1}': expected IN:OUT or macvlan[IN]:OUT"]
    restored = run(*script, "restore", str(images), f"eth0:{b1}")
    out = restored.stdout.splitlines()
    assert out[-1].startswith("restored pid ")
    new = procs.adopt(int(out[-1].split()[-1]))
    stages = [line.split()[1:] for line in out if line.startswith("+")]
    assert [s[0] for s in stages][:3] == ["pre-restore", "setup-namespaces", "post-setup-namespaces"]
    assert ["setup-namespaces", f"pid={new}"] in stages and ["post-restore", f"pid={new}"] in stages
    assert parent_index(new, "eth0") == host_index(b1)


def test_rpc_notify_script_reports_failure(net: Net, procs: Procs, images: Path) -> None:
    a1 = net.veth("pa")
    pid = tree_with_macvlan(net, procs, a1)
    script = [sys.executable, str(EXAMPLES / "rpc_notify.py"), "--criu", CRIU]
    run(*script, "dump", str(pid), str(images))
    res = run(*script, "restore", str(images), "other:nowhere0", check=False)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        "rpc_notify: setup-namespaces: no parent given for macvlan[eth0]:OUT: add --macvlan eth0:OUT "
        "(criu-macvlan restore; in Python, mappings={IN: OUT})"
    ]


@pytest.fixture
def logger_plugin(tmp_path: Path) -> Iterator[dict[str, str]]:
    """examples/plugin-logger pip-installed into a throwaway directory; the env that makes it visible.

    Afterwards the venv's handled-actions cache (which the action script wrote
    while the plugin was visible) is rewritten without it.
    """
    target = tmp_path / "site"
    source = shutil.copytree(EXAMPLES / "plugin-logger", tmp_path / "plugin-logger")  # builds leave files behind
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert res.returncode == 0, res.stderr
    log = tmp_path / "actions.log"
    yield {**os.environ, "PYTHONPATH": str(target), "CRIU_MACVLAN_LOGGER_FILE": str(log)}
    code = "from criu_macvlan.manager import plugin_manager as p, write_actions_cache as w; w(p())"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plugin_logger_is_discovered(logger_plugin: dict[str, str]) -> None:
    code = (
        "from criu_macvlan.manager import plugin_manager; h = plugin_manager(); "
        "print(' '.join(h.plugin_names())); print(' '.join(h.handled_actions()))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=logger_plugin, capture_output=True, text=True, check=True)
    names, actions = out.stdout.splitlines()
    assert names.split() == ["logger", "macvlan"]
    assert "pre-restore" in actions.split() and "post-resume" in actions.split()
    disabled = {**logger_plugin, "CRIU_MACVLAN_DISABLE": "logger"}
    out = subprocess.run([sys.executable, "-c", code], env=disabled, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[0].split() == ["macvlan"]


def logged_actions(env: dict[str, str], net: Net, procs: Procs, images: Path) -> list[list[str]]:
    """Dump and restore a tree with plain criu and the action script; the plugin's log lines, split."""
    a1, b1 = net.veth("pa"), net.veth("pb")
    pid = tree_with_macvlan(net, procs, a1)
    common = ["-D", str(images), "-v4", "--action-script", str(ACTION_SCRIPT)]
    subprocess.run([CRIU, "dump", "-t", str(pid), *common, "-o", "dump.log"], env=env, check=True)
    pidfile = images / "restored.pid"
    subprocess.run(
        [CRIU, "restore", "-d", "--pidfile", str(pidfile), *common, "-o", "restore.log",
         f"--external=macvlan[eth0]:{b1}"],
        env=env, check=True,
    )
    new = procs.adopt(int(pidfile.read_text()))
    assert parent_index(new, "eth0") == host_index(b1)  # the built-in plugin still did its work
    entries = [line.split() for line in Path(env["CRIU_MACVLAN_LOGGER_FILE"]).read_text().splitlines()]
    assert [e[3] for e in entries if e[2] == "setup-namespaces"] == [f"pid={new}"]
    return entries


def test_plugin_logger_called_by_criu(logger_plugin: dict[str, str], net: Net, procs: Procs, images: Path) -> None:
    """criu --action-script runs the installed plugin for every action, next to the built-in one."""
    entries = logged_actions(logger_plugin, net, procs, images)
    # the real images dir; at post-resume CRIU has closed it: only CRTOOLS_IMAGE_DIR's /proc path is left
    assert all(e[1] == "action-script" and e[4].startswith((f"images={images}", "images=/proc/")) for e in entries)
    assert [e[2] for e in entries if e[2] != "post-resume"] == [
        "pre-dump", "network-lock", "post-dump",
        "pre-restore", "setup-namespaces", "post-setup-namespaces", "post-restore", "network-unlock", "pre-resume",
    ]


def test_plugin_logger_sees_post_resume(logger_plugin: dict[str, str], net: Net, procs: Procs, images: Path) -> None:
    """At post-resume CRIU has closed the images dir CRTOOLS_IMAGE_DIR names: hooks still run."""
    entries = logged_actions(logger_plugin, net, procs, images)
    assert [e[2] for e in entries][-1] == "post-resume"
