"""``criu-macvlan serve``: one warm process serves the action script of every CRIU on the host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ACTION_SCRIPT, Net, Procs, alive, criu, unique
from test_action_script import links_json

from criu_macvlan import serve

pytestmark = pytest.mark.integration
CLI = Path(sys.executable).with_name("criu-macvlan")
SCRIPT = ["--action-script", str(ACTION_SCRIPT)]


def start(path: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([str(CLI), "serve", "--dir", path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line.strip() == f"criu-macvlan: serving at {path} (pid {proc.pid})", line
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def served() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A helper in a runtime dir of this test's own: a helper the host may run is never used."""
    path = f"/run/criu-macvlan/test-{unique('s')}"
    proc = start(path)
    try:
        yield path, proc
    finally:
        stop(proc)
        assert not os.path.exists(path)


def env_for(path: str) -> dict[str, str]:
    return {**os.environ, serve.DIR_ENV: path, "CRIU_MACVLAN_DEBUG": "1"}


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


def test_one_helper_per_dir_and_a_dead_one_is_no_harm(net: Net, procs: Procs, images: Path) -> None:
    path = f"/run/criu-macvlan/test-{unique('s')}"
    first = start(path)
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
        again = start(path)  # takes over the stale dir
        stop(again)
    finally:
        stop(first)
        subprocess.run(["rm", "-rf", path], check=False)
    assert not os.path.exists(path)


def test_requests_that_do_not_check_out_are_ignored() -> None:
    assert serve.shim_request(os.getpid()) is None  # no CRTOOLS_* in our environment
    assert serve.shim_request(2**22 + 12345) is None  # no such process


def test_serve_goes_away_when_idle() -> None:
    path = f"/run/criu-macvlan/test-{unique('s')}"
    t0 = time.monotonic()
    assert serve.serve(path, idle_timeout=0.2) == 0
    assert time.monotonic() - t0 < 20
    assert not os.path.exists(path)


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
    from conftest import CRIU

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
