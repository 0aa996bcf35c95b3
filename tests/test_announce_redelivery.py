"""The action script and the announcer ``setup-namespaces`` leaves: ``post-setup-namespaces`` wakes
it without waiting; ``pre-resume`` waits only while its first round is not out; runc's CRIU runs
every action script twice, and no second delivery waits for it (it would hold CRIU until the last
repeat)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, Net, Procs, ip, unique

from criu_macvlan import rundir

pytestmark = pytest.mark.integration


def deliver(action: str, criu_pid: int, fd: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRTOOLS_", "CRIU_MACVLAN_"))}
    env.update(CRTOOLS_SCRIPT_ACTION=action, CRTOOLS_IMAGE_DIR=f"/proc/{criu_pid}/fd/{fd}")
    # the deadline is the test's failure: the announcer lives for its 30 s repeat
    return subprocess.run([str(ACTION_SCRIPT)], env=env, capture_output=True, text=True, timeout=10, check=False)


def test_the_announcer_is_woken_then_waited_for_once(net: Net, procs: Procs, tmp_path: Path) -> None:
    parent = net.veth("an")
    pid = procs.tree()
    mv = unique("mva")
    net.macvlan_into(pid, mv, parent, "mode", "bridge")
    ip("addr", "add", "10.78.0.2/24", "dev", mv, pid=pid)
    ip("link", "set", mv, "up", pid=pid)
    index = int(ip("-o", "link", "show", mv, pid=pid).split(":", 1)[0])
    images = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    criu = subprocess.Popen(["sleep", "1000"], pass_fds=(images,))  # stands in for CRIU: its pid and images fd
    log = tmp_path / "restore.log"  # the arming hook's stderr, as CRIU's log is
    try:
        arm = ("import sys; from criu_macvlan import action, announce, announcer; later = []; "
               "armed = announcer.arm(int(sys.argv[1]), int(sys.argv[2]), [int(sys.argv[3])], "
               "announce.Schedule(rounds=2, interval=30000, step=0, max=30000), None, later); "
               "action.run_later(later); sys.exit(0 if armed else 1)")  # as a cold hook: the fork comes last
        with log.open("w") as err:
            subprocess.run([sys.executable, "-c", arm, str(criu.pid), str(pid), str(index)], check=True, timeout=30,
                           stderr=err, env={**os.environ, "CRIU_MACVLAN_DEBUG": "1"})
        path = Path(rundir.announce_dir(criu.pid))
        assert (path / "go").exists()

        for action in ("post-setup-namespaces", "pre-resume", "post-setup-namespaces", "pre-resume"):
            done = deliver(action, criu.pid, images)
            assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), action
        assert not path.exists()  # the first pre-resume returned once the first round was out
        # the announcer wrote its report to the log itself, as the hook writes its lines
        assert f"criu-macvlan-action: announced {mv} (2 ARP" in log.read_text(), log.read_text()
    finally:
        criu.kill()
        criu.wait()
        os.close(images)


def test_an_announcer_gone_meanwhile_is_neither_waited_for_nor_reported(tmp_path: Path) -> None:
    """``pre-resume`` found the announcer, which then went (its first round out, its dir removed):
    here its ``done`` FIFO is already gone. The shim returns at once, and writes nothing to CRIU's log."""
    images = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    criu = subprocess.Popen(["sleep", "1000"], pass_fds=(images,))  # stands in for CRIU: its pid and images fd
    path = rundir.announce_dir(criu.pid)
    try:
        os.makedirs(rundir.RUN_DIR, mode=0o700, exist_ok=True)
        dir_fd = rundir.private_dir(path, make=True)
        try:
            os.mkfifo("go", 0o600, dir_fd=dir_fd)
            rundir.write_pid(dir_fd)  # this test's process: alive, as the announcer was at the check
        finally:
            os.close(dir_fd)
        done = deliver("pre-resume", criu.pid, images)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    finally:
        rundir.remove_tree(path)
        criu.kill()
        criu.wait()
        os.close(images)
