"""The warm helper: pre-dump leaves it, post-dump runs in it, it exits with CRIU, a dead one is no harm."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, Net, Procs, alive, criu, criu_stand_in, ip

from criu_macvlan import warm


def gone(pid: int, path: str, within: float = 10.0) -> bool:
    """The helper ``pid`` exited (a zombie counts) and its runtime dir ``path`` is removed."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive(pid) and not os.path.exists(path):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def stand_in_criu(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A process holding an images dir as fd 9, as CRIU does: hooks get ``/proc/<it>/fd/9``."""
    images = tmp_path / "img"
    images.mkdir()
    proc = criu_stand_in(images)
    try:
        yield proc, images
    finally:
        proc.kill()
        proc.wait()


def hook(action: str, criu_pid: int, tree: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRTOOLS_", "CRIU_MACVLAN_"))}
    env.update(CRTOOLS_SCRIPT_ACTION=action, CRTOOLS_IMAGE_DIR=f"/proc/{criu_pid}/fd/9", CRIU_MACVLAN_DEBUG="1")
    if tree is not None:
        env["CRTOOLS_INIT_PID"] = str(tree)
    return subprocess.run([str(ACTION_SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.integration
def test_real_dump_runs_post_dump_in_the_helper_which_exits_with_criu(net: Net, procs: Procs, images: Path) -> None:
    parent = net.veth("wp")
    pid = procs.tree()
    net.macvlan_into(pid, "mvw", parent, "mode", "bridge")
    ip("link", "set", "mvw", "up", pid=pid)
    env = {**os.environ, "CRIU_MACVLAN_DEBUG": "1"}
    criu("dump", "-t", str(pid), "--action-script", str(ACTION_SCRIPT), images=images, log="dump.log", env=env)
    log = (images / "dump.log").read_text(errors="replace")
    started = re.search(r"warm helper (\d+) serves the later actions of criu (\d+)", log)
    assert started, log[-3000:]
    helper, criu_pid = int(started.group(1)), int(started.group(2))
    assert f"warm helper {helper} ran post-dump: exit code 0" in log
    assert "1 macvlan entry now EXTLINK" in log  # the action's own messages reach CRIU's log too
    assert (images / "macvlan.img").exists() and not (images / ".criu-macvlan.staged").exists()
    assert gone(helper, warm.runtime_dir(criu_pid)), "the helper outlived criu"


@pytest.mark.integration
def test_helper_exits_when_criu_exits(procs: Procs, stand_in_criu: tuple[subprocess.Popen[bytes], Path]) -> None:
    criu_proc, _ = stand_in_criu
    res = hook("pre-dump", criu_proc.pid, procs.tree())
    assert res.returncode == 0, res.stderr
    path = warm.runtime_dir(criu_proc.pid)
    helper = int(Path(path, "pid").read_text())
    assert alive(helper)
    criu_proc.kill()
    criu_proc.wait()
    assert gone(helper, path)


@pytest.mark.integration
def test_sigterm_removes_the_helper_and_post_dump_still_runs(
    procs: Procs, stand_in_criu: tuple[subprocess.Popen[bytes], Path]
) -> None:
    criu_proc, _ = stand_in_criu
    assert hook("pre-dump", criu_proc.pid, procs.tree()).returncode == 0
    path = warm.runtime_dir(criu_proc.pid)
    helper = int(Path(path, "pid").read_text())
    os.kill(helper, signal.SIGTERM)
    assert gone(helper, path)
    res = hook("post-dump", criu_proc.pid)  # no helper: the normal Python path
    assert res.returncode == 0, res.stderr
    assert "warm helper" not in res.stderr


@pytest.mark.integration
def test_a_dead_helper_left_behind_is_no_harm(stand_in_criu: tuple[subprocess.Popen[bytes], Path]) -> None:
    """A SIGKILLed helper leaves its FIFOs: the shim sees its pid is gone and runs Python."""
    criu_proc, _ = stand_in_criu
    path = warm.runtime_dir(criu_proc.pid)
    dead = subprocess.Popen(["true"])
    dead.wait()
    os.makedirs(path, mode=0o700)
    try:
        for name in ("req", "rep"):
            os.mkfifo(f"{path}/{name}", 0o600)
        Path(path, "pid").write_text(f"{dead.pid}\n")
        res = hook("post-dump", criu_proc.pid)
        assert res.returncode == 0, res.stderr
        assert "warm helper" not in res.stderr
    finally:
        for name in ("req", "rep", "pid"):
            Path(path, name).unlink(missing_ok=True)
        os.rmdir(path)


@pytest.mark.integration
def test_post_dump_failure_in_the_helper_is_the_hooks_exit_code(
    procs: Procs, stand_in_criu: tuple[subprocess.Popen[bytes], Path]
) -> None:
    criu_proc, images = stand_in_criu
    tree = procs.tree()
    assert hook("pre-dump", criu_proc.pid, tree).returncode == 0
    (images / ".criu-macvlan.staged").write_bytes(b"not an image")
    res = hook("post-dump", criu_proc.pid, tree)
    assert res.returncode == 3, res.stderr  # ExitCode.IMAGE, one line from the helper
    assert "criu-macvlan-action: post-dump: .criu-macvlan.staged: wrong magic" in res.stderr
    assert re.search(r"warm helper \d+ ran post-dump: exit code 3", res.stderr)


def test_requests_the_helper_refuses() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    try:
        assert warm.handle("pre-dump /proc/5/fd/9 - 77", 5, null) == "77 refused\n"  # not served
        assert warm.handle("post-dump /proc/6/fd/9 - 77", 5, null) == "77 refused\n"  # another criu's
        assert warm.handle("post-dump /etc 1 77", 5, null) == "77 refused\n"
        assert warm.handle("garbage", 5, null) == ""
    finally:
        os.close(null)
