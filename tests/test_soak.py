"""Repeated dump/restore in one long-lived process: the product's RPC driver, hooks in-process.

The short version runs in the normal suite; ``make soak`` runs ``CRIU_MACVLAN_SOAK``
(default 100) cycles. After every cycle: the links are on the other set of parents,
the tree kept its state (a counter loop keeps counting from where it was), and at
the end nothing is left: no extra links on the host, no netns or socket fds held
by this process, no fd growth.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from helpers import CRIU, Net, Procs, ip, link_names

from criu_macvlan.errors import CriuMacvlanError
from criu_macvlan.netns import tree_pids
from criu_macvlan.rpc import Criu, Notify

pytestmark = pytest.mark.integration
LINKS = 3


def read_counter(path: Path) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.strip().isdigit():
            return int(text)
        time.sleep(0.005)
    raise AssertionError(f"the tree's counter in {path} did not appear")


def wait_counter_above(path: Path, value: int) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = read_counter(path)
        if now > value:
            return now
        time.sleep(0.01)
    raise AssertionError(f"the restored tree did not count past {value}")


def forget(procs: Procs, pid: int) -> None:
    """The tree is gone (CRIU killed it at dump): reap it if it is ours, and never signal its pid again."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    procs.pids.remove(pid)


def parent_indexes(pid: int) -> dict[str, int]:
    out = json.loads(ip("-j", "-d", "link", "show", pid=pid))
    return {link["ifname"]: link.get("link_index", 0) for link in out if link["ifname"] != "lo"}


class Seen(Notify):
    def __init__(self) -> None:
        self.actions: set[str] = set()

    def pre_dump(self) -> None:
        self.actions.add("pre-dump")

    def post_dump(self) -> None:
        self.actions.add("post-dump")

    def setup_namespaces(self, pid: int) -> None:
        self.actions.add("setup-namespaces")


def open_fds() -> list[str]:
    """What this process has open, as ``/proc/self/fd`` shows it (sockets and namespaces included)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found.append(os.readlink(f"/proc/self/fd/{name}"))
    return sorted(found)


def log_tail(images: Path, name: str) -> str:
    path = images / name
    return "\n".join(path.read_text(errors="replace").splitlines()[-30:]) if path.exists() else "(no log)"


def soak(cycles: int, net: Net, procs: Procs, tmp_path: Path) -> None:
    sets = [[net.veth("sa") for _ in range(LINKS)], [net.veth("sb") for _ in range(LINKS)]]
    index = {name: int(ip("-o", "link", "show", name).split(":")[0]) for s in sets for name in s}
    counter = tmp_path / "counter"
    pid = procs.tree("sh", "-c", f"i=0; while :; do i=$((i+1)); echo $i > {counter}; sleep 0.02; done")
    for j in range(LINKS):
        net.macvlan_into(pid, f"mv{j}", sets[0][j], "mode", "bridge")
        ip("link", "set", f"mv{j}", "up", pid=pid)
    host_ours = {n for n in link_names() if n.startswith(tuple(sets[0] + sets[1]))}
    seen = Seen()
    criu = Criu(CRIU, notify=seen)  # one driver for every cycle, as an engine keeps one
    fds_after_first: list[str] | None = None
    threads_after_first = 0
    last = 0
    for cycle in range(cycles):
        images = tmp_path / f"cycle{cycle}"
        images.mkdir()
        target = sets[(cycle + 1) % 2]
        at_dump = read_counter(counter)
        assert at_dump >= last, f"cycle {cycle}: counter went back from {last} to {at_dump}"
        try:
            criu.dump(pid, str(images), log_file="dump.log", log_level=4)
        except CriuMacvlanError as exc:
            raise AssertionError(f"cycle {cycle} dump: {exc}\n{log_tail(images, 'dump.log')}") from exc
        forget(procs, pid)
        maps = {f"mv{j}": target[j] for j in range(LINKS)}
        try:
            pid = procs.adopt(criu.restore(str(images), maps, log_file="restore.log", log_level=4, rst_sibling=True))
        except CriuMacvlanError as exc:
            raise AssertionError(f"cycle {cycle} restore: {exc}\n{log_tail(images, 'restore.log')}") from exc
        assert parent_indexes(pid) == {f"mv{j}": index[target[j]] for j in range(LINKS)}, f"cycle {cycle}"
        last = wait_counter_above(counter, at_dump)
        assert not [n for n in os.listdir(images) if n.startswith(".criu-macvlan")]
        shutil.rmtree(images)
        if fds_after_first is None:
            fds_after_first = open_fds()  # after one cycle: lazy imports and caches have settled
            threads_after_first = threading.active_count()
    assert seen.actions == {"pre-dump", "post-dump", "setup-namespaces"}
    assert open_fds() == fds_after_first, "fd leak in the long-lived process"
    assert threading.active_count() == threads_after_first, "a reader or encoder thread is still running"
    assert not [f for f in open_fds() if f.startswith("net:")], "a netns fd is still held"
    assert not link_names() & {f"mv{j}" for j in range(LINKS)}  # no macvlan of ours in the host netns
    assert {n for n in link_names() if n.startswith(tuple(sets[0] + sets[1]))} == host_ours
    assert len({os.stat(f"/proc/{p}/ns/net").st_ino for p in tree_pids(pid)}) == 1


def test_soak_short(net: Net, procs: Procs, tmp_path: Path) -> None:
    soak(5, net, procs, tmp_path)


@pytest.mark.soak
def test_soak_long(net: Net, procs: Procs, tmp_path: Path) -> None:
    cycles = int(os.environ.get("CRIU_MACVLAN_SOAK", "0"))
    if cycles <= 0:
        pytest.skip("set CRIU_MACVLAN_SOAK=N (make soak) to run N cycles")
    soak(cycles, net, procs, tmp_path)
