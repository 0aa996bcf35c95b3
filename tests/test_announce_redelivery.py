"""runc's CRIU runs every action script twice: the second ``post-setup-namespaces`` must not
wait for the announcer the first one woke (it would hold CRIU until the last repeat)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, Net, Procs, ip, unique

from criu_macvlan import announcer

pytestmark = pytest.mark.integration


def post_setup_namespaces(criu_pid: int, fd: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRTOOLS_", "CRIU_MACVLAN_"))}
    env.update(CRTOOLS_SCRIPT_ACTION="post-setup-namespaces", CRTOOLS_IMAGE_DIR=f"/proc/{criu_pid}/fd/{fd}")
    # the deadline is the test's failure: the announcer lives for its 30 s repeat
    return subprocess.run([str(ACTION_SCRIPT)], env=env, capture_output=True, text=True, timeout=10, check=False)


def test_a_second_delivery_finds_no_announcer_to_wait_for(net: Net, procs: Procs, tmp_path: Path) -> None:
    parent = net.veth("an")
    pid = procs.tree()
    mv = unique("mva")
    net.macvlan_into(pid, mv, parent, "mode", "bridge")
    ip("addr", "add", "10.78.0.2/24", "dev", mv, pid=pid)
    ip("link", "set", mv, "up", pid=pid)
    index = int(ip("-o", "link", "show", mv, pid=pid).split(":", 1)[0])
    images = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    criu = subprocess.Popen(["sleep", "1000"], pass_fds=(images,))  # stands in for CRIU: its pid and images fd
    try:
        arm = ("import sys; from criu_macvlan import announce, announcer; "
               "sys.exit(0 if announcer.arm(int(sys.argv[1]), int(sys.argv[2]), [int(sys.argv[3])], "
               "announce.Schedule(rounds=2, interval=30000, step=0, max=30000), None) else 1)")
        subprocess.run([sys.executable, "-c", arm, str(criu.pid), str(pid), str(index)], check=True, timeout=30)
        path = Path(announcer.runtime_dir(criu.pid))
        assert (path / "go").exists()

        first = post_setup_namespaces(criu.pid, images)
        assert first.returncode == 0, first.stderr
        assert not path.exists()  # gone before the first delivery returned
        second = post_setup_namespaces(criu.pid, images)
        assert second.returncode == 0, second.stderr
    finally:
        criu.kill()
        criu.wait()
        os.close(images)
