"""The warm helper: pre-dump leaves it, post-dump runs in it, it exits with CRIU, a dead one is no harm."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, Net, Procs, alive, criu, criu_stand_in, ip

from criu_macvlan import spare
from criu_macvlan.rundir import per_dump_dir


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
    assert gone(helper, per_dump_dir(criu_pid)), "the helper outlived criu"


@pytest.mark.integration
def test_helper_exits_when_criu_exits(procs: Procs, stand_in_criu: tuple[subprocess.Popen[bytes], Path]) -> None:
    criu_proc, _ = stand_in_criu
    res = hook("pre-dump", criu_proc.pid, procs.tree())
    assert res.returncode == 0, res.stderr
    path = per_dump_dir(criu_proc.pid)
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
    path = per_dump_dir(criu_proc.pid)
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
    path = per_dump_dir(criu_proc.pid)
    dead = subprocess.Popen(["true"])
    dead.wait()
    os.makedirs(path, mode=0o700)
    try:
        os.mkfifo(f"{path}/req", 0o600)
        Path(path, "pid").write_text(f"{dead.pid}\n")
        res = hook("post-dump", criu_proc.pid)
        assert res.returncode == 0, res.stderr
        assert "warm helper" not in res.stderr
    finally:
        for name in ("req", "pid"):
            Path(path, name).unlink(missing_ok=True)
        os.rmdir(path)


# A stand-in for CRIU that runs the hooks itself, as CRIU does (the per-dump helper serves only
# hooks whose parent is its CRIU process): one "ACTION TREE" line on stdin per hook, its exit
# code and stderr (JSON) back on stdout.
RUNNER = r"""
import json, os, subprocess, sys
os.dup2(os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY), 9)
for line in sys.stdin:
    action, tree = line.split()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRTOOLS_")}
    env.update(CRTOOLS_SCRIPT_ACTION=action, CRTOOLS_IMAGE_DIR=f"/proc/{os.getpid()}/fd/9", CRTOOLS_INIT_PID=tree)
    res = subprocess.run([sys.argv[2]], env=env, pass_fds=(9,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, timeout=60)
    print(res.returncode, json.dumps(res.stderr), flush=True)
"""


@pytest.mark.integration
def test_post_dump_failure_in_the_helper_is_the_hooks_exit_code(procs: Procs, tmp_path: Path) -> None:
    images = tmp_path / "img"
    images.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRTOOLS_", "CRIU_MACVLAN_"))}
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(images), str(ACTION_SCRIPT)], text=True,
                              env={**env, "CRIU_MACVLAN_DEBUG": "1"}, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert runner.stdin is not None and runner.stdout is not None
    tree = procs.tree()

    def run(action: str) -> tuple[int, str]:
        assert runner.stdin is not None and runner.stdout is not None
        runner.stdin.write(f"{action} {tree}\n")
        runner.stdin.flush()
        code, err = runner.stdout.readline().split(" ", 1)
        return int(code), json.loads(err)

    try:
        assert run("pre-dump")[0] == 0
        helper = int(Path(per_dump_dir(runner.pid), "pid").read_text())
        (images / ".criu-macvlan.staged").write_bytes(b"not an image")
        code, err = run("post-dump")
        assert code == 3, err  # ExitCode.IMAGE, one line from the helper
        assert "criu-macvlan-action: post-dump: .criu-macvlan.staged: wrong magic" in err
        assert f"warm helper {helper} ran post-dump: exit code 3" in err
        # the same action from a hook that is not a child of that CRIU: refused, Python runs it
        res = hook("post-dump", runner.pid, tree)
        assert res.returncode == 3, res.stderr
        assert "wrong magic" in res.stderr and "warm helper" not in res.stderr
    finally:
        runner.stdin.close()
        runner.wait(timeout=60)
    assert gone(helper, per_dump_dir(runner.pid)), "the helper outlived its criu"


def test_requests_the_helper_refuses(tmp_path: Path) -> None:
    """Scoped to one CRIU process (here: this test's), it serves only that process's post-dump and network-unlock."""
    def request(action: str, images: str, criu_pid: int = os.getpid()) -> dict[str, str] | None:
        env = {"PATH": os.environ["PATH"], "CRTOOLS_SCRIPT_ACTION": action, "CRTOOLS_IMAGE_DIR": images}
        # a waiting hook, whose parent is "criu", asking once it runs: until a new program has
        # set up its stack, /proc/PID/environ reads empty, even after Popen has returned
        shim = subprocess.Popen(["sh", "-c", "echo; read -r _"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert shim.stdout is not None and shim.stdout.readline() == b"\n"
            return spare.shim_request(shim.pid, criu_pid)
        finally:
            shim.kill()
            shim.wait()

    held = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ours = f"/proc/{os.getpid()}/fd/{held}"
        for action in ("post-dump", "network-unlock"):
            served = request(action, ours)
            assert served is not None and served["CRTOOLS_SCRIPT_ACTION"] == action
        assert spare.shim_request(os.getpid()) is None  # not a hook at all
        assert request("pre-dump", ours) is None  # not served
        assert request("post-dump", ours, criu_pid=os.getppid()) is None  # another criu's hook
        assert request("post-dump", f"/proc/{os.getppid()}/fd/{held}") is None  # another process's images dir
        assert request("post-dump", "/etc") is None
    finally:
        os.close(held)
