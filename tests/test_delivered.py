"""Repeated deliveries of an action (runc: every action twice) cost no Python start.

The rules, on the shell hook itself: a first delivery always runs; after it succeeded
the next one exits 0 from the marker; after it failed the next one runs again; a
marker of an earlier process with the same pid does not count. Then the real thing:
runc with the action script in its CRIU config file, counting Python starts.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, REPO, Net, Procs, ip
from runc_bundle import Runc
from segment import Segment, configure_l3

from criu_macvlan import delivered, rundir
from criu_macvlan.manager import plugin_manager

HANDLED = " ".join(plugin_manager().handled_actions())


class FakeCriu:
    """A process holding an images dir open, as CRIU does: the hook's CRTOOLS_IMAGE_DIR points into it."""

    def __init__(self, images: Path) -> None:
        fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.proc = subprocess.Popen(["sleep", "100000"], pass_fds=[fd])
        finally:
            os.close(fd)
        self.image_dir = f"/proc/{self.proc.pid}/fd/{fd}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def python_log(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """An interpreter that logs each start and runs the checkout's Python; the hook's env to use it."""
    log = tmp_path / "python-starts"
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\necho "$CRTOOLS_SCRIPT_ACTION" >> {log}\nexec {REPO}/.venv/bin/python "$@"\n')
    wrapper.chmod(0o755)
    log.touch()
    env = dict(
        os.environ,
        CRIU_MACVLAN_PYTHON=str(wrapper),
        CRIU_MACVLAN_ACTIONS=HANDLED,  # as the handled-actions file next to the real Python says
        CRIU_MACVLAN_SERVE_DIR=str(tmp_path / "no-serve"),  # another test's `serve` must not answer
        CRIU_MACVLAN_NO_HELPER="1",
    )
    yield log, env


def deliver(criu: FakeCriu, action: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # the "tree" is the holder itself: in the host netns, nothing of ours to dump
    env = dict(env, CRTOOLS_SCRIPT_ACTION=action, CRTOOLS_IMAGE_DIR=criu.image_dir,
               CRTOOLS_INIT_PID=str(criu.proc.pid))
    return subprocess.run([str(ACTION_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def marker(criu: FakeCriu, action: str) -> Path:
    start = delivered.process_start(criu.proc.pid)
    assert start is not None
    return Path(delivered.DONE_DIR) / delivered.marker_name(criu.proc.pid, start, action)


@pytest.mark.integration
def test_second_delivery_after_success_starts_no_python(
    images: Path, python_log: tuple[Path, dict[str, str]]
) -> None:
    log, env = python_log
    criu = FakeCriu(images)  # no macvlan.img: setup-namespaces has nothing to do, and succeeds
    try:
        assert not marker(criu, "setup-namespaces").exists()
        assert deliver(criu, "setup-namespaces", env).returncode == 0
        assert log.read_text().split() == ["setup-namespaces"]
        done = marker(criu, "setup-namespaces")
        assert done.exists()
        assert stat.S_IMODE(Path(delivered.DONE_DIR).stat().st_mode) == 0o700
        assert deliver(criu, "setup-namespaces", env).returncode == 0
        assert log.read_text().split() == ["setup-namespaces"]  # no second start
        assert deliver(criu, "pre-dump", env).returncode == 0  # another action: a first delivery
        assert log.read_text().split() == ["setup-namespaces", "pre-dump"]
    finally:
        criu.stop()
    other = FakeCriu(images)
    try:  # the next record sweeps the dead process's markers
        assert deliver(other, "setup-namespaces", env).returncode == 0
        assert not done.exists()
        assert marker(other, "setup-namespaces").exists()
    finally:
        other.stop()


@pytest.mark.integration
def test_second_delivery_after_failure_runs_again(images: Path, python_log: tuple[Path, dict[str, str]]) -> None:
    log, env = python_log
    (images / "macvlan.img").write_bytes(b"not an image")
    criu = FakeCriu(images)
    try:
        first = deliver(criu, "setup-namespaces", env)
        assert first.returncode == 3, first.stderr
        assert "macvlan.img" in first.stderr
        assert not marker(criu, "setup-namespaces").exists()
        second = deliver(criu, "setup-namespaces", env)
        assert second.returncode == 3
        assert log.read_text().split() == ["setup-namespaces"] * 2
    finally:
        criu.stop()


@pytest.mark.integration
def test_marker_of_a_reused_pid_does_not_count(images: Path, python_log: tuple[Path, dict[str, str]]) -> None:
    log, env = python_log
    criu = FakeCriu(images)
    try:
        done = marker(criu, "setup-namespaces")
        stale = done.with_name(delivered.marker_name(criu.proc.pid, "1", "setup-namespaces"))
        os.close(delivered.open_done_dir())  # makes the directory
        stale.touch(mode=0o600)  # an earlier process with this pid, started at tick 1
        assert deliver(criu, "setup-namespaces", env).returncode == 0
        assert log.read_text().split() == ["setup-namespaces"]
        assert not stale.exists()  # swept
    finally:
        criu.stop()


def test_private_dir_refuses_shared_or_symlinked(tmp_path: Path) -> None:
    parent = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(rundir.private_dir("ok", parent, make=True))
        assert stat.S_IMODE((tmp_path / "ok").stat().st_mode) == 0o700
        (tmp_path / "open").mkdir(mode=0o755)
        (tmp_path / "open").chmod(0o755)
        with pytest.raises(PermissionError):
            rundir.private_dir("open", parent, make=True)
        (tmp_path / "link").symlink_to(tmp_path / "ok")
        with pytest.raises(OSError):
            rundir.private_dir("link", parent, make=True)
    finally:
        os.close(parent)


def test_process_start_and_marker_names() -> None:
    start = delivered.process_start(os.getpid())
    assert start is not None and start.isdigit()
    with open("/proc/self/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[19] == start
    assert delivered.process_start(2**22 + 1) is None  # above pid_max: never a process
    assert delivered.record(2**22 + 1, "setup-namespaces") is False  # nothing to key a marker on
    assert delivered.marker_name(12, start, "pre-dump") == f"12.{start}.pre-dump"


@pytest.mark.integration
def test_runc_twice_delivered_actions_start_python_once(
    net: Net, procs: Procs, container: Runc, python_log: tuple[Path, dict[str, str]]
) -> None:
    """runc + the config file's action script: CRIU runs it twice per action, Python starts once."""
    log, env = python_log
    for key in ("CRIU_MACVLAN_PYTHON", "CRIU_MACVLAN_ACTIONS", "CRIU_MACVLAN_SERVE_DIR"):
        container.env[key] = env[key]
    seg = Segment(net, procs)
    container.criu_conf.write_text(f"action-script {ACTION_SCRIPT}\nexternal macvlan[mvb]:{seg.b}\n")
    container("create", container.id)
    configure_l3(net, container.pid(), seg.a)
    container("start", container.id)
    paths = ("--image-path", str(container.images), "--work-path", str(container.work))
    container("checkpoint", *paths, container.id)
    container("restore", "-d", *paths, container.id)

    after = json.loads(ip("-j", "-d", "link", "show", "dev", "mvb", pid=container.pid()))[0]
    assert after["link_index"] == json.loads(ip("-j", "link", "show", "dev", seg.b))[0]["ifindex"]
    for name, action in (("dump.log", "pre-dump"), ("restore.log", "setup-namespaces")):
        lines = (container.work / name).read_text().splitlines()
        at = next(i for i, ln in enumerate(lines) if ln.endswith(f"Running {action} scripts"))
        # up to the next action's; other processes (usernsd) may log between the two runs
        end = next((i for i in range(at + 1, len(lines)) if re.search(r"Running \S+ scripts$", lines[i])), len(lines))
        runs = [ln for ln in lines[at + 1 : end] if ln.endswith(f"[{ACTION_SCRIPT}]")]
        assert len(runs) == 2, f"CRIU ran the {action} script {len(runs)} times: {lines[at:end]}"
    starts = log.read_text().split()
    assert starts.count("pre-dump") == 1
    assert starts.count("setup-namespaces") == 1
    assert all(starts.count(a) <= 1 for a in set(starts)), starts
