"""The restored macvlan's MAC moves on a real switch (a bridge) before any other traffic.

Topology: a bridge with three ports — host A's NIC, host B's NIC (veth pairs whose
peers are bridge ports) and a client netns. A quiet service (``sleep``, IPv6 off in
its netns) with a macvlan on A is dumped and restored onto B through each path; the
bridge's FDB must point the service's MAC at B's port as soon as the restore
returns, and the client's first ping must be answered. With announce off the entry
stays on A's port: the test sees the difference it claims.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, Net, Procs, alive, criu, ip, read_line, run, unique
from segment import Announcements

import criu_macvlan
from criu_macvlan import netdev, serve
from criu_macvlan.proc import parent_of

SCRIPT = ["--action-script", str(ACTION_SCRIPT)]
CLI = Path(sys.executable).with_name("criu-macvlan")
SERVICE, CLIENT = "10.77.0.2", "10.77.0.1"
SERVICE_V6 = "2001:db8:77::2"
ETH_P_ALL = 0x0003

# One ICMP echo (no ping binary needed): exit 0 when the answer comes within 3 s.
PING = """
import os, select, socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF
body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"criu-macvlan"
total = sum(struct.unpack("!%dH" % (len(body) // 2), body))
total = (total & 0xFFFF) + (total >> 16)
s.sendto(body[:2] + struct.pack("!H", ~(total + (total >> 16)) & 0xFFFF) + body[4:], (sys.argv[1], 0))
deadline = time.monotonic() + 3
while select.select([s], [], [], max(0, deadline - time.monotonic()))[0]:
    data, (src, _) = s.recvfrom(1500)
    icmp = data[(data[0] & 15) * 4:]
    if src == sys.argv[1] and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
        sys.exit(0)
sys.exit(1)
"""


class Switch:
    """A bridge with host A's and host B's NICs and a client netns on its ports."""

    def __init__(self, net: Net, procs: Procs) -> None:
        self.bridge = net.bridge("sw")
        self.a, self.b = net.veth("ha"), net.veth("hb")
        for nic in (self.a, self.b):
            ip("link", "set", nic + "p", "master", self.bridge)
        self.client = procs.tree()
        port = net.veth("cl")
        ip("link", "set", port + "p", "master", self.bridge)
        ip("link", "set", port, "netns", str(self.client))
        ip("link", "set", port, "name", "c0", "up", pid=self.client)
        ip("addr", "add", f"{CLIENT}/24", "dev", "c0", pid=self.client)
        self.mac = "02:c0:ff:ee:" + ":".join(f"{b:02x}" for b in os.urandom(2))

    def service(self, procs: Procs, ipv6: bool = False) -> int:
        """A quiet tree with a macvlan on A: it sends nothing unless asked."""
        pid = procs.tree()
        if not ipv6:
            for scope in ("all", "default"):
                run("nsenter", "-t", str(pid), "-n", "sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6=1")
        Net().macvlan_into(pid, "eth0", self.a, "mode", "bridge")
        ip("link", "set", "eth0", "address", self.mac, "up", pid=pid)
        ip("addr", "add", f"{SERVICE}/24", "dev", "eth0", pid=pid)
        if ipv6:
            ip("addr", "add", f"{SERVICE_V6}/64", "dev", "eth0", "nodad", pid=pid)
        return pid

    def port_of_mac(self) -> str | None:
        """The bridge port its FDB sends the service's MAC to (``None``: not learned)."""
        for entry in json.loads(run("bridge", "-j", "fdb", "show", "br", self.bridge).stdout):
            if entry.get("mac") == self.mac and "vlan" not in entry:
                return str(entry["ifname"])
        return None

    def ping(self) -> bool:
        res = run("nsenter", "-t", str(self.client), "-n", sys.executable, "-c", PING, SERVICE, check=False)
        return res.returncode == 0


def dump_service(sw: Switch, procs: Procs, images: Path, *extra: str, ipv6: bool = False,
                 bare: str | None = None) -> None:
    """The service on A, dumped; ``bare``: the MAC of a second macvlan, eth1, up without addresses."""
    pid = sw.service(procs, ipv6)
    if bare:
        Net().macvlan_into(pid, "eth1", sw.a, "mode", "bridge")
        run("nsenter", "-t", str(pid), "-n", "sysctl", "-qw", "net.ipv6.conf.eth1.disable_ipv6=1")  # no link-local
        ip("link", "set", "eth1", "address", bare, "up", pid=pid)
    assert sw.ping()  # the switch learns the service's MAC behind A's port
    assert sw.port_of_mac() == sw.a + "p"
    criu("dump", "-t", str(pid), *SCRIPT, *extra, images=images, log="dump.log")
    assert not alive(pid)


def restore(path: str, sw: Switch, procs: Procs, images: Path, announce: bool = True, empty: bool = False,
            links: tuple[str, ...] = ("eth0",)) -> int:
    """Restore ``links`` on B through ``path``; the restored pid once the restore returned."""
    pidfile = images / "restored.pid"
    env = {**os.environ, "CRIU_MACVLAN_DEBUG": "1"}
    if not announce:
        env["CRIU_MACVLAN_ANNOUNCE"] = "off"
    ns = ["--empty-ns", "net"] if empty else []
    if path == "rpc":
        pid = criu_macvlan.restore(str(images), dict.fromkeys(links, sw.b), announce=announce, log_file="restore.log",
                                   empty_ns_net=empty)
        return procs.adopt(pid)
    if path == "cli":
        res = run(str(CLI), "restore", "-D", str(images), "--macvlan", f"eth0:{sw.b}", "-d", *ns,
                  *([] if announce else ["--no-announce"]), check=False)
        assert res.returncode == 0, res.stderr
        return procs.adopt(int(res.stdout))
    externals = [f"--external=macvlan[{name}]:{sw.b}" for name in links]
    res = criu("restore", "-d", "--pidfile", str(pidfile), *SCRIPT, *externals, *ns,
               images=images, log="restore.log", env=env)
    assert res.returncode == 0
    pid = procs.adopt(int(pidfile.read_text()))  # first: ended by the fixture even if a check below fails
    assert "cannot announce" not in (images / "restore.log").read_text()
    return pid


def assert_reported_before_resume(images: Path) -> None:
    """Action script: the announcer's own report (CRIU_MACVLAN_DEBUG) is in CRIU's log, written
    before CRIU resumed the tasks (pre-resume waits for a first round not out yet)."""
    log = (images / "restore.log").read_text()
    assert log.index("criu-macvlan-action: announced ") < log.index("Restore finished successfully")


@pytest.fixture
def served() -> Iterator[int]:
    """``criu-macvlan serve`` in a runtime dir of this test's own, seen by the action script; its pid."""
    path = f"/run/criu-macvlan/test-{unique('a')}"
    proc = subprocess.Popen([str(CLI), "serve", "--dir", path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    old = os.environ.get(serve.DIR_ENV)
    try:
        assert "serving at" in read_line(proc.stderr)
        os.environ[serve.DIR_ENV] = path
        yield proc.pid
    finally:
        if old is None:
            os.environ.pop(serve.DIR_ENV, None)
        else:
            os.environ[serve.DIR_ENV] = old
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.integration
@pytest.mark.parametrize("path", ["action-script", "rpc", "cli"])
@pytest.mark.parametrize("empty", [False, True], ids=["criu-netns", "empty-netns"])
def test_the_switch_learns_the_new_port_at_restore(net: Net, procs: Procs, images: Path, path: str,
                                                   empty: bool) -> None:
    sw = Switch(net, procs)
    dump_service(sw, procs, images, *(["--empty-ns", "net"] if empty else []))
    restore(path, sw, procs, images, empty=empty)
    assert sw.port_of_mac() == sw.b + "p"  # before any traffic of the service or the client
    assert sw.ping()  # the first ping after the restore is answered
    if path == "action-script":
        assert_reported_before_resume(images)


@pytest.mark.integration
def test_served_action_script_announces_too(net: Net, procs: Procs, images: Path, served: int,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The child of ``serve`` that ran setup-namespaces is the announcer itself (no fork while CRIU
    waits): while its second round is due (30 s on) it is still that child, in a session of its own."""
    monkeypatch.setenv("CRIU_MACVLAN_ANNOUNCE", "rounds=2,interval=30000")
    sw = Switch(net, procs)
    dump_service(sw, procs, images)
    restore("action-script", sw, procs, images)
    log = (images / "restore.log").read_text()
    assert "criu-macvlan serve" in log
    assert_reported_before_resume(images)
    assert sw.port_of_mac() == sw.b + "p"
    assert sw.ping()
    announcer = int(log.split("more round(s) from pid ")[1].split()[0])
    try:
        assert parent_of(announcer) == served
        assert os.getsid(announcer) == announcer
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(announcer, signal.SIGTERM)


@pytest.mark.integration
@pytest.mark.parametrize("path", ["action-script", "rpc", "cli"])
def test_with_announce_off_the_switch_keeps_the_old_port(net: Net, procs: Procs, images: Path, path: str) -> None:
    sw = Switch(net, procs)
    dump_service(sw, procs, images)
    # CRIU saved eth0 with IPv6 off: the plugin makes it so at once (no MLD/DAD frame from it either)
    fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert [netdev.summarize_netdev(fd, n).ipv6_off for n in netdev.netdev_images(fd)] == [["eth0"]]
    finally:
        os.close(fd)
    new = restore(path, sw, procs, images, announce=False)
    assert alive(new)
    port = sw.port_of_mac()
    assert port == sw.a + "p", run("bridge", "fdb", "show", "br", sw.bridge).stdout  # nothing told the switch


@pytest.mark.integration
@pytest.mark.parametrize("path", ["action-script", "rpc"])
def test_a_link_restored_down_is_not_announced(net: Net, procs: Procs, images: Path, path: str) -> None:
    """Down at the dump, down after the restore: no announcer is armed, nothing tells the switch."""
    sw = Switch(net, procs)
    pid = sw.service(procs)
    assert sw.ping()
    ip("link", "set", "eth0", "down", pid=pid)
    criu("dump", "-t", str(pid), *SCRIPT, images=images, log="dump.log")
    new = restore(path, sw, procs, images)
    assert "state DOWN" in ip("-o", "link", "show", "eth0", pid=new)
    assert sw.port_of_mac() == sw.a + "p", run("bridge", "fdb", "show", "br", sw.bridge).stdout
    if path == "action-script":
        log = (images / "restore.log").read_text()
        assert "announce: no restored link is up" in log and "announced" not in log


@pytest.mark.integration
def test_announce_off_in_the_hosts_criu_macvlan_conf(net: Net, procs: Procs, images: Path,
                                                     etc_files: Callable[[str, str], None]) -> None:
    """The form an action-script or engine user sets: a line in /etc/criu/criu-macvlan.conf."""
    sw = Switch(net, procs)
    dump_service(sw, procs, images)
    etc_files("/etc/criu/criu-macvlan.conf", "macvlan-announce off\n")
    new = restore("action-script", sw, procs, images)  # nothing in the environment says off
    assert alive(new)
    assert sw.port_of_mac() == sw.a + "p", run("bridge", "fdb", "show", "br", sw.bridge).stdout


@pytest.mark.integration
@pytest.mark.parametrize("path", ["action-script", "rpc"])
def test_what_is_sent_and_how_often(net: Net, procs: Procs, images: Path, path: str) -> None:
    """IPv6 on: GARP request and reply for the IPv4 address and an NA for the IPv6 one, one frame for a
    link without addresses, five rounds, from a process that keeps no fd of the images directory."""
    sw = Switch(net, procs)
    bare = "02:c0:ff:ee:ba:5e"
    dump_service(sw, procs, images, ipv6=True, bare=bare)
    seen = Announcements(sw.b + "p")
    try:
        restore(path, sw, procs, images, links=("eth0", "eth1"))
        holders = []
        for fd in Path("/proc").glob("[0-9]*/fd/*"):
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith(str(images)):
                    holders.append(str(fd))
        assert holders == []  # CRIU is gone, and the announcers never had the images dir
        counts = seen.count(sw.mac, SERVICE, SERVICE_V6, rounds=5, bare=bare)
        assert min(counts.values()) >= 5, counts
    finally:
        seen.close()


@pytest.mark.integration
def test_a_bad_setting_warns_once_and_announces_with_the_defaults(net: Net, procs: Procs, images: Path) -> None:
    sw = Switch(net, procs)
    dump_service(sw, procs, images)
    pidfile = images / "restored.pid"
    criu("restore", "-d", "--pidfile", str(pidfile), *SCRIPT, f"--external=macvlan[eth0]:{sw.b}",
         images=images, log="restore.log", env={**os.environ, "CRIU_MACVLAN_ANNOUNCE": "loudly"})
    procs.adopt(int(pidfile.read_text()))
    warnings = [line for line in (images / "restore.log").read_text().splitlines() if "loudly" in line]
    assert warnings == ["criu-macvlan-action: $CRIU_MACVLAN_ANNOUNCE: bad value 'loudly': expected off, on, or "
                        "rounds=N,interval=MS[,step=MS][,max=MS] (rounds <= 100, times <= 60000 ms); announcing "
                        "with the default rounds=5,interval=50,step=100,max=550"]
    assert sw.port_of_mac() == sw.b + "p"


def test_a_bad_setting_from_the_cli_is_a_usage_error(tmp_path: Path) -> None:
    res = run(str(CLI), "restore", "-D", str(tmp_path), "--macvlan", "eth0:lo", "--announce", "rounds=x", check=False)
    assert res.returncode == 2
    assert res.stderr == ("criu-macvlan: announce: bad value 'rounds=x': expected off, on, or "
                          "rounds=N,interval=MS[,step=MS][,max=MS] (rounds <= 100, times <= 60000 ms)\n")
