"""``criu-macvlan serve``: one warm process serves the action script of every CRIU on the host."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, SCRIPT, Net, Procs, alive, criu, env_for, links_json, start_serve, stop_serve, unique

from criu_macvlan import serve, spare

CLI = Path(sys.executable).with_name("criu-macvlan")


@pytest.mark.integration
def test_dump_and_restore_are_served(net: Net, procs: Procs, images: Path,
                                     served: tuple[str, subprocess.Popen[str]]) -> None:
    path, proc = served
    a, b = net.veth("sa"), net.veth("sb")
    pid = procs.tree()
    net.macvlan_into(pid, "mvs", a, "mode", "bridge")
    before = links_json(pid)["mvs"]
    criu("dump", "-t", str(pid), *SCRIPT, images=images, log="dump.log", env=env_for(path))
    log = (images / "dump.log").read_text()
    for action in ("pre-dump", "post-dump"):
        assert f"criu-macvlan serve (pid {proc.pid}) ran {action}: exit code 0" in log
    assert (images / "macvlan.img").exists()
    pidfile = images / "restored.pid"
    criu("restore", "-d", "--pidfile", str(pidfile), *SCRIPT, f"--external=macvlan[mvs]:{b}",
         images=images, log="restore.log", env=env_for(path))
    new = procs.adopt(int(pidfile.read_text()))
    assert f"criu-macvlan serve (pid {proc.pid}) ran setup-namespaces: exit code 0" in (
        images / "restore.log").read_text()
    after = links_json(new)["mvs"]
    assert after["address"] == before["address"] and after["ifindex"] == before["ifindex"]
    assert after["link_index"] == links_json()[b]["ifindex"]
    assert sorted(os.listdir(path)) == ["pid", "req"]  # no reply FIFO left behind
    assert proc.poll() is None


@pytest.mark.integration
def test_a_failing_action_fails_the_same_when_served(net: Net, procs: Procs, images: Path,
                                                     served: tuple[str, subprocess.Popen[str]]) -> None:
    path, proc = served
    a = net.veth("sa")
    pid = procs.tree()
    net.macvlan_into(pid, "mvs", a, "mode", "bridge")
    criu("dump", "-t", str(pid), *SCRIPT, images=images, log="dump.log", env=env_for(path))
    res = criu("restore", "-d", *SCRIPT, images=images, log="restore.log", env=env_for(path), check=False)
    assert res.returncode != 0
    log = (images / "restore.log").read_text()
    assert "criu-macvlan-action: setup-namespaces: no parent given for macvlan[mvs]:OUT" in log
    assert f"criu-macvlan serve (pid {proc.pid}) ran setup-namespaces: exit code 2" in log
    assert proc.poll() is None  # a failed action does not hurt the helper


@pytest.mark.integration
def test_one_helper_per_dir_and_a_dead_one_is_no_harm(net: Net, procs: Procs, images: Path) -> None:
    path = f"/run/criu-macvlan/test-{unique('s')}"
    first = start_serve(path)
    try:
        second = subprocess.run([str(CLI), "serve", "--dir", path], capture_output=True, text=True, timeout=30,
                                check=False)
        assert second.returncode == 2
        assert second.stderr.strip() == f"criu-macvlan: serve: already running (pid {first.pid})"
        first.kill()  # no clean-up: a stale pid file and FIFO stay
        first.wait()
        assert os.path.exists(f"{path}/pid")
        a, b = net.veth("sa"), net.veth("sb")
        pid = procs.tree()
        net.macvlan_into(pid, "mvs", a, "mode", "bridge")
        criu("dump", "-t", str(pid), *SCRIPT, images=images, log="dump.log", env=env_for(path))
        pidfile = images / "restored.pid"
        criu("restore", "-d", "--pidfile", str(pidfile), *SCRIPT, f"--external=macvlan[mvs]:{b}",
             images=images, log="restore.log", env=env_for(path))
        new = procs.adopt(int(pidfile.read_text()))
        assert alive(new) and "mvs" in links_json(new)
        assert "criu-macvlan serve" not in (images / "restore.log").read_text()  # Python ran it
        again = start_serve(path)  # takes over the stale dir
        stop_serve(again)
    finally:
        stop_serve(first)
        subprocess.run(["rm", "-rf", path], check=False)
    assert not os.path.exists(path)


def test_requests_that_do_not_check_out_are_ignored() -> None:
    assert spare.shim_request(os.getpid()) is None  # no CRTOOLS_* in our environment
    assert spare.shim_request(2**22 + 12345) is None  # no such process


@pytest.mark.integration
def test_serve_goes_away_when_idle() -> None:
    path = f"/run/criu-macvlan/test-{unique('s')}"
    t0 = time.monotonic()
    assert serve.serve(path, idle_timeout=0.2) == 0
    assert time.monotonic() - t0 < 20
    assert not os.path.exists(path)


@pytest.mark.integration
def test_a_refused_request_falls_back_to_python_at_once(tmp_path: Path,
                                                        served: tuple[str, subprocess.Popen[str]]) -> None:
    """The images dir is not one a CRIU parent of the hook holds: the helper refuses, the hook runs Python."""
    path, _ = served
    env = {**env_for(path), "CRTOOLS_SCRIPT_ACTION": "setup-namespaces", "CRTOOLS_IMAGE_DIR": str(tmp_path),
           "CRTOOLS_INIT_PID": str(os.getpid())}
    t0 = time.monotonic()
    res = subprocess.run([str(ACTION_SCRIPT)], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert time.monotonic() - t0 < 30
    assert res.returncode == 0, res.stderr  # no sidecar: nothing to do, said by Python
    assert "criu-macvlan serve" not in res.stderr
    assert sorted(os.listdir(path)) == ["pid", "req"]


def test_the_systemd_unit_runs_the_serve_command() -> None:
    unit = (Path(__file__).resolve().parents[1] / "examples" / "criu-macvlan.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split("=", 1)[1].split()[1:] == ["serve", "--idle-timeout", "600"]
    res = subprocess.run([str(CLI), "serve", "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0 and "--idle-timeout" in res.stdout


@pytest.mark.integration
def test_two_restores_at_once_are_both_served(net: Net, procs: Procs, tmp_path: Path,
                                              served: tuple[str, subprocess.Popen[str]]) -> None:
    """Each request runs in a child of its own: two CRIUs restoring at the same time do not wait for each other."""
    path, proc = served
    a, b = net.veth("sa"), net.veth("sb")
    dirs = []
    for i in range(2):
        pid = procs.tree()
        net.macvlan_into(pid, f"mvc{i}", a, "mode", "bridge")
        d = tmp_path / f"img{i}"
        d.mkdir()
        criu("dump", "-t", str(pid), *SCRIPT, images=d, log="dump.log", env=env_for(path))
        dirs.append(d)
    from helpers import CRIU

    running = [
        subprocess.Popen([CRIU, "restore", "-d", "--pidfile", str(d / "restored.pid"), *SCRIPT,
                          f"--external=macvlan[mvc{i}]:{b}", "-D", str(d), "-v4", "-o", "restore.log"],
                         env=env_for(path), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        for i, d in enumerate(dirs)
    ]
    assert [p.wait(timeout=120) for p in running] == [0, 0]
    for i, d in enumerate(dirs):
        new = procs.adopt(int((d / "restored.pid").read_text()))
        assert links_json(new)[f"mvc{i}"]["link_index"] == links_json()[b]["ifindex"]
        assert f"criu-macvlan serve (pid {proc.pid}) ran setup-namespaces: exit code 0" in (
            d / "restore.log").read_text()
