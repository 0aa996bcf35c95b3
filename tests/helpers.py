"""What the tests share: unique names, links and process trees made and removed, the real criu,
link and address snapshots, leftovers, and the check that a link moved with everything it had.

Every link a test makes is created through :class:`Net` and deleted at teardown
(also when the test fails); every process through :class:`Procs` and killed by
pid. Names are unique per test run and per test, and never those of the host.
Fixtures that hand these out are in ``conftest.py``; test modules import from here,
never from each other.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from devtools.tree import start_tree

REPO = Path(__file__).resolve().parents[1]
ACTION_SCRIPT = REPO / "hooks" / "criu-macvlan-action"
CRIU = shutil.which("criu") or "/usr/sbin/criu"
SCRIPT = ["--action-script", str(ACTION_SCRIPT)]  # criu's options that run our hook
_counter = itertools.count()


def unique(prefix: str) -> str:
    """An interface-safe name (<= 15 bytes) unique to this test run: prefix + pid + counter."""
    name = f"{prefix}{os.getpid() % 10000:04d}{next(_counter):03d}"
    assert len(name) <= 15, name
    return name


def run(*cmd: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)  # type: ignore[call-overload,no-any-return]


def ip(*args: str, pid: int | None = None, check: bool = True) -> str:
    """``ip`` in the root netns, or in the netns of ``pid`` (test set-up only)."""
    prefix = ["nsenter", "-t", str(pid), "-n"] if pid is not None else []
    return run(*prefix, "ip", *args, check=check).stdout


def link_names(pid: int | None = None) -> set[str]:
    out = ip("-o", "link", "show", pid=pid)
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line}


def leaked(before: set[str]) -> set[str]:
    """Links new in the host netns that are ours: this run's unique names or the macvlans' names.

    Other engineers' (or CI jobs') tests add and remove their own links meanwhile: a
    plain set comparison would see theirs.
    """
    tag = f"{os.getpid() % 10000:04d}"
    return {n for n in link_names() - before if tag in n or n.startswith(("mv", "tm"))}


def netns_inode(pid: int | str) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


class Net:
    """Links in the root netns made by one test; all deleted at teardown."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def name(self, prefix: str) -> str:
        return unique(prefix)

    def veth(self, prefix: str = "vp", mtu: int | None = None, up: bool = True) -> str:
        """A veth pair (NAME, NAMEp); NAME is a usable macvlan parent."""
        name = unique(prefix)
        peer = name + "p"
        ip("link", "add", name, "type", "veth", "peer", "name", peer)
        self.created.append(name)
        if mtu:
            ip("link", "set", name, "mtu", str(mtu))
            ip("link", "set", peer, "mtu", str(mtu))
        if up:
            ip("link", "set", name, "up")
            ip("link", "set", peer, "up")
        return name

    def bridge(self, prefix: str = "br") -> str:
        name = unique(prefix)
        ip("link", "add", name, "type", "bridge")
        self.created.append(name)
        ip("link", "set", name, "up")
        return name

    def macvlan_into(self, pid: int, name: str, parent: str, *args: str, flags: int | None = None) -> None:
        """Create macvlan ``name`` on ``parent`` and move it into the netns of ``pid``.

        ``flags`` sets IFLA_MACVLAN_FLAGS (iproute2 only allows nopromisc with passthru).
        """
        tmp = unique("tm")
        if flags is None:
            ip("link", "add", tmp, "link", parent, "type", "macvlan", *args)
        else:
            from pyroute2 import IPRoute

            mode = args[args.index("mode") + 1] if "mode" in args else "vepa"
            # numeric: criu_macvlan.netlink, once imported in this process, drops pyroute2's mode names
            number = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8, "source": 16}[mode]
            with IPRoute() as ipr:
                index = ipr.link_lookup(ifname=parent)[0]
                ipr.link("add", ifname=tmp, kind="macvlan", link=index, macvlan_mode=number, macvlan_flags=flags)
        try:
            ip("link", "set", tmp, "netns", str(pid))
        except subprocess.CalledProcessError:
            ip("link", "del", tmp, check=False)
            raise
        ip("link", "set", tmp, "name", name, pid=pid)

    def cleanup(self) -> None:
        for name in reversed(self.created):
            ip("link", "del", name, check=False)
        self.created.clear()


class Procs:
    """Processes (and process trees) started by one test; killed by pid at teardown."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.popens: list[subprocess.Popen[bytes]] = []

    def tree(self, *cmd: str, net: bool = True, pass_fds: tuple[int, ...] = ()) -> int:
        """Start ``cmd`` as pid 1 of a new pid+net namespace (pid only: ``net=False``); return its pid on the host."""
        p, pid = start_tree(*(cmd or ("sleep", "100000")), net=net, pass_fds=pass_fds)
        self.popens.append(p)
        self.pids.append(pid)
        return pid

    def adopt(self, pid: int) -> int:
        """Track a process started by someone else for us (e.g. a restored tree)."""
        self.pids.append(pid)
        return pid

    def cleanup(self) -> None:
        for pid in reversed(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for p in self.popens:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.pids.clear()


def read_line(stream: IO[str] | None, timeout: float = 60) -> str:
    """The next line a child writes to its pipe; a test fails instead of hanging on a child that never writes."""
    assert stream is not None
    if not select.select([stream], [], [], timeout)[0]:
        pytest.fail(f"no line from the child within {timeout:.0f} s")
    return stream.readline()


def criu_stand_in(images: Path) -> subprocess.Popen[bytes]:
    """A process holding an images dir as fd 9, as CRIU does: hooks get ``/proc/<it>/fd/9``."""
    proc = subprocess.Popen(["sh", "-c", 'exec 9<"$0"; exec sleep 1000', str(images)])
    deadline = time.monotonic() + 10
    while not os.path.exists(f"/proc/{proc.pid}/fd/9"):
        assert time.monotonic() < deadline
        time.sleep(0.001)
    return proc


def wait_unshared(pid: int, timeout: float = 10) -> int:
    """Wait until ``pid`` (e.g. ``unshare --net CMD``, exec'd in place) runs in a netns of its own; return it."""
    deadline = time.monotonic() + timeout
    while os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net") or not alive(pid):
        if time.monotonic() > deadline:
            pytest.fail(f"process {pid} did not get a netns of its own")
        time.sleep(0.001)
    return pid


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")



def criu(
    *args: str, images: Path, log: str, check: bool = True, env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the real criu with ``-D images -v4 -o log``; on failure show the end of its log.

    ``timeout``: a deadline for a hang (raises ``TimeoutExpired``), not a speed check.
    """
    res = run(CRIU, *args, "-D", str(images), "-v4", "-o", log, check=False, env=env, timeout=timeout)
    if check and res.returncode != 0:
        tail = (images / log).read_text(errors="replace").splitlines()[-40:] if (images / log).exists() else []
        pytest.fail(f"criu {args[0]} failed ({res.returncode}): {res.stderr}\n" + "\n".join(tail))
    return res


def criu_version() -> tuple[int, ...]:
    out = run(CRIU, "--version", check=False).stdout
    for line in out.splitlines():
        if line.startswith("Version:"):
            return tuple(int(x) for x in line.split()[1].split(".") if x.isdigit())
    return (0,)


# ------------------------------------------------------- link snapshots


def links_json(pid: int | None = None) -> dict[str, dict[str, Any]]:
    out = ip("-j", "-d", "link", "show", pid=pid)
    return {link["ifname"]: link for link in json.loads(out)}


def addrs_json(pid: int) -> dict[str, set[str]]:
    out = ip("-j", "addr", "show", pid=pid)
    result: dict[str, set[str]] = {}
    for link in json.loads(out):
        result[link["ifname"]] = {
            f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("scope") != "link"
        }
    return result


def setup_links(net: Net, pid: int, a1: str, a2: str) -> None:
    """The main scenario: four macvlans on two parents, every property that matters."""
    net.macvlan_into(pid, "mvb", a1, "mode", "bridge")
    ip("link", "set", "mvb", "address", "02:42:ac:11:00:02", "mtu", "1400", "up", pid=pid)
    ip("addr", "add", "10.231.0.2/24", "dev", "mvb", pid=pid)
    ip("addr", "add", "2001:db8:231::2/64", "dev", "mvb", "nodad", pid=pid)
    net.macvlan_into(pid, "mvv", a2, "mode", "vepa", flags=1)  # nopromisc
    ip("link", "set", "mvv", "up", pid=pid)
    ip("addr", "add", "10.232.0.2/24", "dev", "mvv", pid=pid)
    net.macvlan_into(pid, "mvd", a1, "mode", "private")  # stays down
    net.macvlan_into(pid, "mvs", a2, "mode", "source")
    ip("link", "set", "mvs", "type", "macvlan", "macaddr", "add", "02:00:00:00:aa:01", pid=pid)
    ip("link", "set", "mvs", "type", "macvlan", "macaddr", "add", "02:00:00:00:aa:02", pid=pid)
    ip("link", "set", "mvs", "up", pid=pid)


def comparable(link: dict[str, Any]) -> dict[str, Any]:
    data = link["linkinfo"].get("info_data", {})
    return {
        "ifindex": link["ifindex"],
        "address": link["address"],
        "mtu": link["mtu"],
        "up": "UP" in link["flags"],
        "txqlen": link.get("txqlen"),
        "mode": data.get("mode"),
        "nopromisc": data.get("nopromisc", False),
        "nodst": data.get("nodst", False),
        "macaddr": sorted(data.get("macaddr_data", [])),
        "bcqueuelen": data.get("bcqueuelen"),
    }


def assert_moved(new: int, before: dict[str, dict[str, Any]], addrs_before: dict[str, set[str]],
                 parents: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Tree ``new`` has each link of ``parents`` as it was ``before``, now on that parent, and the same addresses.

    Returns the restored links (``links_json(new)``).
    """
    after, host = links_json(new), links_json()
    for name, parent in parents.items():
        assert comparable(after[name]) == comparable(before[name]), name
        assert after[name]["link_index"] == host[parent]["ifindex"], f"{name} not on {parent}"
    assert addrs_json(new) == addrs_before
    return after



@dataclass
class FourLinks:
    """The main scenario (:func:`setup_links`) in a new tree, on host A's parents; host B's parents
    ``b1``, ``b2`` to restore onto; the tree's links and addresses and the host's links before the dump."""

    pid: int
    b1: str
    b2: str
    before: dict[str, dict[str, Any]]
    addrs: dict[str, set[str]]
    host_before: set[str]

    @classmethod
    def make(cls, net: Net, procs: Procs) -> FourLinks:
        a1, a2, b1, b2 = net.veth("pa"), net.veth("pa"), net.veth("pb"), net.veth("pb")
        host_before = link_names()
        pid = procs.tree()
        setup_links(net, pid, a1, a2)
        return cls(pid, b1, b2, links_json(pid), addrs_json(pid), host_before)

    @property
    def maps(self) -> dict[str, str]:
        """Each link and its parent on host B."""
        return {"mvb": self.b1, "mvd": self.b1, "mvv": self.b2, "mvs": self.b2}

    def assert_moved(self, new: int) -> dict[str, dict[str, Any]]:
        return assert_moved(new, self.before, self.addrs, self.maps)

    def assert_nothing_left(self, procs: Procs) -> None:
        """Once the trees are gone, nothing of ours is left in the host's netns."""
        procs.cleanup()
        assert leaked(self.host_before) == set()



def dumped(net: Net, procs: Procs, images_dir: Path) -> tuple[int, str]:
    """A tree with macvlan mv0 dumped into ``images_dir`` with the action script; the pid and a parent to restore on."""
    a, b = net.veth("pa"), net.veth("pb")
    pid = procs.tree()
    net.macvlan_into(pid, "mv0", a, "mode", "bridge")
    criu("dump", "-t", str(pid), "--action-script", str(ACTION_SCRIPT), images=images_dir, log="dump.log")
    return pid, b

# ------------------------------------------------------- criu-macvlan serve

CLI = Path(sys.executable).with_name("criu-macvlan")


def start_serve(path: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([str(CLI), "serve", "--dir", path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = read_line(proc.stderr)
    assert line.strip() == f"criu-macvlan: serving at {path} (pid {proc.pid})", line
    return proc


def stop_serve(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def env_for(serve_dir: str) -> dict[str, str]:
    """The environment of a criu whose hook asks the ``criu-macvlan serve`` of ``serve_dir``."""
    return {**os.environ, "CRIU_MACVLAN_SERVE_DIR": serve_dir, "CRIU_MACVLAN_DEBUG": "1"}


def engine_request(kind: str, images: Path, **opts: Any) -> Any:
    """One request the way an engine sends it: pycriu's connection, rpc_pb2, no notify_scripts."""
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
