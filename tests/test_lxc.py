"""LXC (``lxc-checkpoint``, which runs the criu CLI) with a macvlan container, restored onto
another parent whose new link's ifindex is taken on the host: the migration case.

LXC passes ``--external macvlan[eth0]:<lxc.net.0.link>`` on restore and remaps the link
natively, but CRIU's native macvlan restore creates the link in the host netns first, so an
ifindex taken there fails it (``-95``). The plugin creates it in the container's netns.

The busybox template works offline. Its ``rcS`` runs udhcpc (which drops the static
address) and it bind-mounts ``/lib`` & co (symlinks on a usrmerged host, which CRIU cannot
restore): the test container runs busybox init with a ``sleep`` only, and no such mounts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import ACTION_SCRIPT, Net, ip, leaked, link_names, unique

LXC_TOOLS = ("lxc-create", "lxc-start", "lxc-checkpoint", "lxc-info", "lxc-stop", "lxc-destroy")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in LXC_TOOLS), reason="needs LXC: apt-get install lxc (make setup does)"
    ),
]

MAC = "02:5a:1c:00:00:02"
ADDR = "10.233.0.2/24"


@dataclass
class Container:
    name: str
    lxcpath: Path

    @property
    def config(self) -> Path:
        return self.lxcpath / self.name / "config"

    def lxc(
        self, tool: str, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``lxc-TOOL``; its output goes through a file: a restored container's monitor keeps it open."""
        with tempfile.TemporaryFile("w+") as out:
            cmd = [f"lxc-{tool}", "-P", str(self.lxcpath), "-n", self.name, *args]
            res = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, timeout=120)
            out.seek(0)
            text = out.read()
        if check and res.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({res.returncode}): {text[-2000:]}")
        return subprocess.CompletedProcess(cmd, res.returncode, text, text)

    def pid(self) -> int:
        out = self.lxc("info", "-pH", check=False).stdout.strip()
        return int(out) if out.isdigit() else 0

    def set_link(self, parent: str) -> None:
        lines = self.config.read_text().splitlines()
        self.config.write_text(
            "".join((f"lxc.net.0.link = {parent}" if ln.startswith("lxc.net.0.link") else ln) + "\n" for ln in lines)
        )


@pytest.fixture
def container(net: Net, tmp_path: Path) -> Iterator[tuple[Container, str, str]]:
    """A running busybox container with eth0, a macvlan on parent A; yields it, A and B."""
    parent_a, parent_b = net.veth("la"), net.veth("lb")
    ct = Container(unique("ctmv"), tmp_path / "lxc")
    ct.lxcpath.mkdir()
    conf = tmp_path / "net.conf"
    conf.write_text(
        f"lxc.net.0.type = macvlan\nlxc.net.0.link = {parent_a}\nlxc.net.0.macvlan.mode = bridge\n"
        f"lxc.net.0.flags = up\nlxc.net.0.name = eth0\nlxc.net.0.hwaddr = {MAC}\n"
        f"lxc.net.0.ipv4.address = {ADDR}\n"
        # no tty for init: CRIU cannot dump a console it has no master of
        "lxc.console.path = none\nlxc.tty.max = 0\n"
    )
    try:
        res = ct.lxc("create", "-t", "busybox", "-f", str(conf), check=False)
        if res.returncode != 0:
            pytest.skip(f"lxc-create -t busybox failed: {res.stderr.strip()[-300:]}")
        kept = [
            ln for ln in ct.config.read_text().splitlines()
            # apparmor: LXC would pass --lsm-profile, CRIU fails without AppArmor in the kernel
            if not ln.startswith(("lxc.apparmor", "lxc.tty.max"))
            and not (ln.startswith("lxc.mount.entry") and " none ro,bind " in ln)
        ]
        ct.config.write_text("\n".join(kept) + "\n")
        rootfs = ct.lxcpath / ct.name / "rootfs"
        (rootfs / "etc/init.d/rcS").write_text("#!/bin/sh\nexit 0\n")
        (rootfs / "etc/inittab").write_text("::sysinit:/etc/init.d/rcS\n::respawn:/bin/sleep 100000\n")
        log = tmp_path / "start.log"
        res = ct.lxc("start", "-l", "INFO", "-o", str(log), check=False)
        if res.returncode != 0 or not ct.pid():
            tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
            pytest.skip("LXC cannot start a container here: " + " | ".join(tail or [res.stderr.strip()]))
        yield ct, parent_a, parent_b
    finally:
        ct.lxc("stop", "-k", check=False)
        ct.lxc("destroy", "-f", check=False)


def eth0(pid: int) -> dict[str, Any]:
    link: dict[str, Any] = json.loads(ip("-j", "-d", "addr", "show", "eth0", pid=pid))[0]
    return link


def take_ifindex(net: Net, index: int) -> set[str]:
    """Make ``index`` taken in the host netns (by a veth pair of ours, unless something holds it already)."""
    if any(link["ifindex"] == index for link in json.loads(ip("-j", "link", "show"))):
        return set()
    name = unique("lx")
    ip("link", "add", name, "index", str(index), "type", "veth", "peer", "name", name + "p")
    net.created.append(name)
    return {name, name + "p"}


def checkpoint(ct: Container, images: Path, how: str, tmp_path: Path) -> dict[str, str] | None:
    """``lxc-checkpoint -s`` the way a user names the action script; returns the env for restore."""
    env = None
    args = ["-s", "-D", str(images), "-v"]
    if how == "-A":
        args += ["-A", str(ACTION_SCRIPT)]
    elif how == "CRIU_CONFIG_FILE":
        conf = tmp_path / "criu.conf"
        conf.write_text(f"action-script {ACTION_SCRIPT}\n")
        env = dict(os.environ, CRIU_CONFIG_FILE=str(conf))
    res = ct.lxc("checkpoint", *args, check=False, env=env)
    assert res.returncode == 0, res.stderr + (images / "dump.log").read_text(errors="replace")[-3000:]
    assert not ct.pid(), "lxc-checkpoint -s must stop the container"
    return env


@pytest.mark.parametrize("how", ["-A", "CRIU_CONFIG_FILE"])
def test_lxc_restore_onto_other_parent_with_ifindex_taken(
    container: tuple[Container, str, str], net: Net, tmp_path: Path, how: str
) -> None:
    ct, _, parent_b = container
    host_before = link_names()
    before = eth0(ct.pid())
    assert before["address"] == MAC
    images = tmp_path / "ck"
    env = checkpoint(ct, images, how, tmp_path)
    assert (images / "macvlan.img").exists()
    ours = take_ifindex(net, before["ifindex"])
    ct.set_link(parent_b)

    restore_args = ["-r", "-D", str(images), "-v"] + (["-A", str(ACTION_SCRIPT)] if how == "-A" else [])
    res = ct.lxc("checkpoint", *restore_args, check=False, env=env)
    assert res.returncode == 0, res.stderr + (images / "restore.log").read_text(errors="replace")[-3000:]
    pid = ct.pid()
    assert pid
    after = eth0(pid)
    assert after["linkinfo"]["info_kind"] == "macvlan"
    assert after["link_index"] == json.loads(ip("-j", "link", "show", parent_b))[0]["ifindex"]
    assert (after["ifindex"], after["address"]) == (before["ifindex"], MAC)
    addrs = {f"{a['local']}/{a['prefixlen']}" for a in after["addr_info"] if a["family"] == "inet"}
    assert addrs == {ADDR}
    ct.lxc("stop", "-k")
    assert leaked(host_before) == ours


def test_lxc_native_restore_fails_when_ifindex_taken(
    container: tuple[Container, str, str], net: Net, tmp_path: Path
) -> None:
    """Without the plugin the same migration fails in CRIU: what the test above relies on."""
    ct, _, parent_b = container
    index = eth0(ct.pid())["ifindex"]
    images = tmp_path / "ck"
    checkpoint(ct, images, "native", tmp_path)
    assert not (images / "macvlan.img").exists()
    take_ifindex(net, index)
    ct.set_link(parent_b)
    res = ct.lxc("checkpoint", "-r", "-D", str(images), "-v", check=False)
    assert res.returncode != 0
    log = (images / "restore.log").read_text(errors="replace")
    assert "couldn't restore macvlan interface eth0" in log
    assert "-95 reported by netlink" in log
    assert not ct.pid()
