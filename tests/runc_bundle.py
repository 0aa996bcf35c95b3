"""Test support: a runc container with busybox httpd on its macvlan's addresses, in a bundle of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from helpers import Net, ip, unique
from segment import PORT, V4, V6, Segment, addresses, configure_l3, routes

RUNC = shutil.which("runc")
BUSYBOX = "/bin/busybox"
HOST_ID = 100000  # container root is uid/gid 100000 on the host

# busybox httpd on the macvlan's addresses, started once they exist
SERVE = (
    f"while ! httpd -p {V4}:{PORT} -h /www; do sleep 0.1; done; "
    f"while ! httpd -p [{V6}]:{PORT} -h /www; do sleep 0.1; done; exec sleep 100000"
)


class Runc:
    """One container (bundle, state root, images) in a 0755 temp dir the mapped uid can read."""

    def __init__(self, env: dict[str, str], userns: bool = True, annotation: bool = True) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cmv-runc-"))
        os.chmod(self.dir, 0o755)
        self.id = unique("cmv")
        self.env = env
        self.root = self.dir / "state"
        rootfs = self.dir / "rootfs"
        for sub in ("bin", "proc", "dev", "www", "tmp"):
            (rootfs / sub).mkdir(parents=True)
        shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
        for applet in ("sh", "sleep", "httpd"):
            (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / "www" / "index.html").write_text("hello from the container\n")
        subprocess.run([RUNC, "spec"], cwd=self.dir, check=True)
        config = json.loads((self.dir / "config.json").read_text())
        config["process"]["terminal"] = False
        config["process"]["args"] = ["/bin/sh", "-c", SERVE]
        config["root"] = {"path": "rootfs", "readonly": False}
        config["mounts"] = [m for m in config["mounts"] if not m["destination"].startswith("/sys")]
        if userns:
            config["linux"]["namespaces"].append({"type": "user"})
            mapping = [{"containerID": 0, "hostID": HOST_ID, "size": 65536}]
            config["linux"]["uidMappings"] = config["linux"]["gidMappings"] = mapping
        self.criu_conf = self.dir / "criu.conf"
        if annotation:
            config["annotations"] = {"org.criu.config": str(self.criu_conf)}
        (self.dir / "config.json").write_text(json.dumps(config))
        self.images = self.dir / "images"
        self.work = self.dir / "work"
        for d in (self.images, self.work):
            d.mkdir(mode=0o755)

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [RUNC, "--root", str(self.root), "--log", str(self.dir / "runc.log"), *args]
        # the container inherits runc's stdio on create/restore: /dev/null (criu cannot dump a pipe)
        detached = args[0] in ("create", "restore")
        res = subprocess.run(
            cmd, cwd=self.dir, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if detached else subprocess.PIPE, text=True, timeout=120,
        )
        if check and res.returncode != 0:
            runc_log = (self.dir / "runc.log").read_text() if (self.dir / "runc.log").exists() else ""
            logs = [p for p in (self.work / "dump.log", self.work / "restore.log") if p.exists()]
            tail = "\n".join(line for p in logs for line in p.read_text().splitlines()[-25:])
            pytest.fail(f"runc {args[0]} failed: {res.stderr}{runc_log[-2000:]}\n{tail}")
        return res

    def start_on(self, net: Net, seg: Segment, userns: bool = True) -> int:
        """``runc create``; the macvlan mvb and its L3 on parent A, made from the host (as CNI does);
        ``runc start``. Returns the container's pid once it serves on its IPv4 address."""
        self("create", self.id)
        pid = self.pid()
        if userns:  # the tree is in its own user namespace
            assert Path(f"/proc/{pid}/uid_map").read_text().split()[:2] == ["0", str(HOST_ID)]
        configure_l3(net, pid, seg.a)
        self("start", self.id)
        assert fetch(seg, V4) == "hello from the container"
        return pid

    def pid(self) -> int:
        out = subprocess.run([RUNC, "--root", str(self.root), "state", self.id], capture_output=True, text=True)
        return int(json.loads(out.stdout)["pid"])

    def destroy(self) -> None:
        if not self.dir.exists():
            return
        self("kill", self.id, "KILL", check=False)
        self("delete", "--force", self.id, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def mvb_routes(pid: int) -> list[tuple[object, ...]]:
    return [r for r in routes(pid) if r[4] == "mvb"]


def fetch(seg: Segment, addr: str) -> str:
    host = f"[{addr}]" if ":" in addr else addr
    code = f"import urllib.request; print(urllib.request.urlopen('http://{host}:{PORT}/', timeout=5).read().decode())"
    res = subprocess.run(["nsenter", "-t", str(seg.peer), "-n", "python3", "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def mvb_state(pid: int) -> tuple[dict[str, Any], list[tuple[Any, ...]], list[tuple[object, ...]]]:
    """The container's macvlan mvb (``ip -j -d link``), its addresses and its routes."""
    return json.loads(ip("-j", "-d", "link", "show", "dev", "mvb", pid=pid))[0], addresses(pid, "mvb"), mvb_routes(pid)
