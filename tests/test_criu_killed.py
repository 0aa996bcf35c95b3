"""CRIU SIGKILLed in the middle of a restore: nothing waits forever, nothing of ours is left.

The kill comes from an action script of CRIU's own config file (CRIU runs it in
RPC mode too, after our notification) at ``setup-namespaces``: the restored
tree's root task then exists, a child of CRIU that outlives it (and, over RPC,
keeps CRIU's end of the socket open). Every test kills that orphan by pid.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, CRIU, Net, Procs, alive, criu

from criu_macvlan.errors import ExitCode


def killer(tmp_path: Path) -> Path:
    """An action script that records the restored root task and SIGKILLs its criu at setup-namespaces."""
    script = tmp_path / "kill-criu.sh"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$CRTOOLS_SCRIPT_ACTION" = setup-namespaces ] || exit 0\n'
        f'echo "$CRTOOLS_INIT_PID" > {tmp_path}/init.pid\n'
        'criu=${CRTOOLS_IMAGE_DIR#/proc/}\n'
        'kill -KILL "${criu%%/*}"\n'
        "sleep 30\n"  # criu is gone: nobody waits for us
    )
    script.chmod(0o755)
    return script


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    # the timeout is a deadline for a hang, not a speed check
    return subprocess.run([sys.executable, "-m", "criu_macvlan.cli", "--criu", CRIU, *args],
                          capture_output=True, text=True, timeout=120, check=False)


def adopt_orphan(procs: Procs, tmp_path: Path) -> int:
    deadline = time.monotonic() + 10
    pidfile = tmp_path / "init.pid"
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return procs.adopt(int(pidfile.read_text()))


@pytest.mark.integration
def test_cli_restore_fails_when_criu_swrk_is_killed(net: Net, procs: Procs, tmp_path: Path) -> None:
    a, b = net.veth("pa"), net.veth("pb")
    images = tmp_path / "img"
    images.mkdir()
    pid = procs.tree()
    net.macvlan_into(pid, "mv0", a, "mode", "bridge")
    assert cli("dump", "-t", str(pid), "-D", str(images)).returncode == 0
    conf = tmp_path / "kill.conf"
    conf.write_text(f"action-script {killer(tmp_path)}\n")
    res = cli("restore", "-D", str(images), "-d", "--macvlan", f"mv0:{b}", "--config", str(conf))
    orphan = adopt_orphan(procs, tmp_path)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("criu-macvlan: criu restore: criu swrk (pid "), lines
    assert lines[0].endswith(f" was killed by SIGKILL before it answered (CRIU's log: {images}/criu.log)"), lines
    assert res.returncode == ExitCode.CRIU
    assert alive(orphan)  # CRIU's leftover (see docs/criu-killed.md): the test kills it


def macvlans_into(pid: int, parent: str, n: int) -> None:
    """``n`` macvlans ``mv0``.. made straight in the netns of ``pid`` (one ``ip -batch``)."""
    lines = "".join(f"link add mv{i} link {parent} netns {pid} type macvlan mode bridge\n" for i in range(n))
    subprocess.run(["ip", "-batch", "-"], input=lines, text=True, check=True, timeout=120)


def macvlans_in(pid: int) -> int:
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-o", "link", "show", "type", "macvlan"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return len(out.splitlines())


@pytest.mark.integration
def test_action_script_stops_and_rolls_back_when_criu_is_killed(net: Net, procs: Procs, tmp_path: Path) -> None:
    """400 links; criu SIGKILLed once the first ones exist: the hook stops, removes them and says so."""
    n = 400
    a, b = net.veth("pa"), net.veth("pb")
    images = tmp_path / "img"
    images.mkdir()
    pid = procs.tree()
    macvlans_into(pid, a, n)
    env = dict(os.environ, CRIU_MACVLAN_SERVE_DIR=str(tmp_path / "no-serve"))  # this checkout's hook, cold
    criu("dump", "-t", str(pid), "--action-script", str(ACTION_SCRIPT), images=images, log="dump.log", env=env)
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'[ "$CRTOOLS_SCRIPT_ACTION" = setup-namespaces ] || exec {ACTION_SCRIPT}\n'
        f'echo "$CRTOOLS_INIT_PID" > {tmp_path}/init.pid\n'
        f"{ACTION_SCRIPT} & hook=$!\n"
        # the first link in the target netns, seen with builtins alone (no process per look: the hook may
        # make all 400 meanwhile), from its /proc/PID/net/dev (which takes no rtnl lock)
        'seen() { while read -r line; do case $line in mv*) return 0 ;; esac; done < "$1"; return 1; }\n'
        "i=0\n"
        'until seen "/proc/$CRTOOLS_INIT_PID/net/dev" || [ $i -gt 200000 ]; do\n'
        "    i=$((i + 1))\n"
        "done\n"
        'criu=${CRTOOLS_IMAGE_DIR#/proc/}\n'
        'kill -KILL "${criu%%/*}"\n'
        'wait "$hook"\n'
        f"echo $? > {tmp_path}/hook.status.tmp && mv {tmp_path}/hook.status.tmp {tmp_path}/hook.status\n"
    )
    wrapper.chmod(0o755)
    maps = [arg for i in range(n) for arg in ("--external", f"macvlan[mv{i}]:{b}")]
    # no pipes: the orphans criu leaves would hold them open
    res = subprocess.run([CRIU, "restore", "-d", "--action-script", str(wrapper), *maps, "-D", str(images), "-v4",
                          "-o", "restore.log"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                         timeout=300, check=False)
    orphan = adopt_orphan(procs, tmp_path)
    assert res.returncode == -9  # SIGKILLed
    status = tmp_path / "hook.status"
    deadline = time.monotonic() + 120
    while not status.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert int(status.read_text()) == ExitCode.FAILED
    log = (images / "restore.log").read_text(errors="replace")
    ours = [line for line in log.splitlines() if "criu-macvlan-action:" in line]
    assert len(ours) == 1, ours
    assert ours[0].startswith("criu-macvlan-action: setup-namespaces: criu (pid "), ours
    assert " exited while the macvlans were being made (" in ours[0] and f" of {n}): removed them" in ours[0]
    assert alive(orphan)  # CRIU's own leftover, holding the netns (docs/criu-killed.md)
    assert macvlans_in(orphan) == 0


def test_criu_watch_sees_its_process_exit() -> None:
    from criu_macvlan.watch import CriuGone, CriuWatch

    child = subprocess.Popen(["sleep", "100000"])
    try:
        with CriuWatch(child.pid) as watch:
            assert watch.alive()
            watch.check("testing")
            child.kill()
            child.wait(timeout=60)
            assert not watch.alive()
            with pytest.raises(CriuGone, match=rf"^criu \(pid {child.pid}\) exited while testing$"):
                watch.check("testing")
    finally:
        child.kill()
        child.wait(timeout=60)
    with CriuWatch(None) as unknown:
        assert unknown.alive()
