"""The runtime directories of `serve` and the warm helper: trusted only when root's alone, swept when stale.

An unprivileged user may pre-make `serve`'s directory where it is configured in
a world-writable place; a serve child may be killed mid-action; a SIGKILLed
warm helper leaves its directory. None of these may make an action hang, be
skipped, or write through a planted file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, CRIU, Net, Procs, alive, criu, criu_stand_in, links_json, read_line, unique

from criu_macvlan import delivered, rundir, serve
from criu_macvlan.proc import process_start

CLI = Path(sys.executable).with_name("criu-macvlan")
SCRIPT = ["--action-script", str(ACTION_SCRIPT)]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
DEADLINE = 60  # a restore that waits for the shim's 300 s timeout fails here


def forget_delivery(action: str) -> None:
    """Remove the marker a hook run as us (we hold the images dir, as CRIU would) left for us: the
    next run of ``action`` is then not answered as a repeated delivery, and reaches the helper."""
    start = process_start(os.getpid())
    assert start is not None
    Path(delivered.DONE_DIR, delivered.marker_name(os.getpid(), start, action)).unlink(missing_ok=True)


def dumped(net: Net, procs: Procs, images: Path, env: dict[str, str]) -> str:
    """Dump a tree with macvlan ``mvr`` (no helper involved); the parent to restore it on."""
    a, b = net.veth("ra"), net.veth("rb")
    pid = procs.tree()
    net.macvlan_into(pid, "mvr", a, "mode", "bridge")
    criu("dump", "-t", str(pid), *SCRIPT, images=images, log="dump.log", env=env)
    return b


def restore(procs: Procs, images: Path, parent: str, env: dict[str, str]) -> int:
    """``criu restore --action-script`` within ``DEADLINE``; the restored pid, its macvlan checked."""
    pidfile = images / "restored.pid"
    res = subprocess.run([CRIU, "restore", "-d", "--pidfile", str(pidfile), *SCRIPT,
                          f"--external=macvlan[mvr]:{parent}", "-D", str(images), "-v4", "-o", "restore.log"],
                         env=env, capture_output=True, text=True, timeout=DEADLINE, check=False)
    assert res.returncode == 0, (images / "restore.log").read_text(errors="replace")[-3000:]
    new = procs.adopt(int(pidfile.read_text()))
    assert links_json(new)["mvr"]["link_index"] == links_json()[parent]["ifindex"]
    return new


@pytest.fixture
def world_writable() -> Iterator[Path]:
    """A sticky world-writable directory like /tmp, of this test's own."""
    path = Path(tempfile.mkdtemp(prefix="criu-macvlan-ww-", dir="/tmp"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def nobody_helper(path: Path) -> subprocess.Popen[bytes]:
    """User nobody's fake helper at ``path``: a ``req`` FIFO it holds open, a pid file naming itself."""
    proc = subprocess.Popen([*NOBODY, "sh", "-c", 'mkdir -m 700 "$1" && mkfifo -m 600 "$1/req" && exec 3<>"$1/req" '
                             '&& echo $$ > "$1/pid" && exec sleep 1000', "sh", str(path)])
    deadline = time.monotonic() + 10
    while not (path / "pid").exists() or not (path / "pid").read_text().strip():
        assert time.monotonic() < deadline and proc.poll() is None, "nobody's helper did not start"
        time.sleep(0.01)
    assert int((path / "pid").read_text()) == proc.pid and (path / "req").stat().st_uid == 65534
    return proc


def pending(fifo: Path) -> bytes:
    """What was written to ``fifo`` and not read (its holder keeps it open)."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""
    finally:
        os.close(fd)


@pytest.mark.integration
def test_a_serve_dir_made_by_another_user_is_not_used(net: Net, procs: Procs, images: Path,
                                                      world_writable: Path) -> None:
    path = world_writable / "serve"
    env = {**os.environ, serve.DIR_ENV: str(path), "CRIU_MACVLAN_DEBUG": "1"}
    parent = dumped(net, procs, images, {**env, serve.DIR_ENV: str(world_writable / "none")})
    fake = nobody_helper(path)
    try:
        restore(procs, images, parent, env)  # Python made the links, at once
        assert pending(path / "req") == b""  # no request went to nobody
        assert sorted(os.listdir(path)) == ["pid", "req"]  # no reply FIFO of ours in its dir
        assert "criu-macvlan serve" not in (images / "restore.log").read_text()

        res = subprocess.run([str(CLI), "serve", "--dir", str(path)], capture_output=True, text=True,
                             timeout=30, check=False)
        assert res.returncode == 2
        assert res.stderr.splitlines() == [
            f"criu-macvlan: serve: {path} is not a directory of root's alone (owner root, mode 0700, no symlink): "
            "remove it or choose another --dir"]
        assert fake.poll() is None and (path / "pid").read_text().strip() == str(fake.pid)  # left as it was
    finally:
        fake.kill()
        fake.wait()


@pytest.mark.integration
def test_a_symlinked_serve_dir_is_not_used(tmp_path: Path) -> None:
    """A symlink to a real helper's directory is not followed by the shim."""
    real = Path(f"/run/criu-macvlan/test-{unique('l')}")
    link = tmp_path / "serve"
    link.symlink_to(real)
    env = {**os.environ, serve.DIR_ENV: str(real)}
    proc = subprocess.Popen([str(CLI), "serve", "--dir", str(real)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert "serving at" in read_line(proc.stderr)
        # we hold the images dir, as CRIU would: the service serves a hook of ours
        images = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        hook_env = {**env, "CRTOOLS_SCRIPT_ACTION": "setup-namespaces",
                    "CRTOOLS_IMAGE_DIR": f"/proc/{os.getpid()}/fd/{images}", "CRIU_MACVLAN_DEBUG": "1"}
        try:
            for where, served in ((str(real), True), (str(link), False)):
                res = subprocess.run([str(ACTION_SCRIPT)], env={**hook_env, serve.DIR_ENV: where},
                                     capture_output=True, text=True, timeout=30, check=False, pass_fds=(images,))
                assert res.returncode == 0, res.stderr
                forget_delivery("setup-namespaces")
                assert ("criu-macvlan serve" in res.stderr) is served, res.stderr
        finally:
            os.close(images)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.integration
def test_the_shim_trusts_only_files_root_made(tmp_path: Path) -> None:
    """In a directory others may write to, the shim uses a helper only through a ``req`` and a ``pid``
    that root made, not through a symlink or a ``pid`` file of another user's (owner checked with
    ``test -O``, symlinks with ``-h``); the helper's own runtime dir is served, as the control."""
    real = Path(f"/run/criu-macvlan/test-{unique('o')}")
    shared = Path(f"/run/cmv-test-{unique('w')}")  # on /run as the helper's: req can be hard-linked
    env = {**os.environ, serve.DIR_ENV: str(real)}
    proc = subprocess.Popen([str(CLI), "serve", "--dir", str(real)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    images = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert "serving at" in read_line(proc.stderr)
        shared.mkdir(mode=0o777)
        shared.chmod(0o1777)
        helper = (real / "pid").read_text()
        hook_env = {**env, "CRTOOLS_SCRIPT_ACTION": "setup-namespaces",
                    "CRTOOLS_IMAGE_DIR": f"/proc/{os.getpid()}/fd/{images}", "CRIU_MACVLAN_DEBUG": "1"}

        def served_from(where: Path) -> bool:
            res = subprocess.run([str(ACTION_SCRIPT)], env={**hook_env, serve.DIR_ENV: str(where)},
                                 capture_output=True, text=True, timeout=DEADLINE, check=False, pass_fds=(images,))
            assert res.returncode == 0, res.stderr
            forget_delivery("setup-namespaces")
            return "criu-macvlan serve" in res.stderr

        def plant(req: str, pid_by: list[str]) -> None:
            for name in ("req", "pid"):
                (shared / name).unlink(missing_ok=True)
            if req == "symlink":
                subprocess.run([*NOBODY, "ln", "-s", str(real / "req"), str(shared / "req")], check=True)
            else:
                os.link(real / "req", shared / "req")  # root's FIFO, the helper's own
            subprocess.run([*pid_by, "sh", "-c", 'printf "%s" "$1" > "$2"', "sh", helper, str(shared / "pid")],
                           check=True)

        assert served_from(real)
        plant("link", [])
        assert served_from(shared)  # root made both: the shim cannot tell them from the helper's
        plant("symlink", [])
        assert not served_from(shared)
        plant("link", NOBODY)
        assert not served_from(shared)
    finally:
        os.close(images)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(shared, ignore_errors=True)


BLOCKER = '''
import os, time
from criu_macvlan.hookspecs import hookimpl

MARK = os.environ["BLOCKER_MARK"]  # read at import: the served child takes the hook's environment


class Blocker:
    @hookimpl
    def criu_setup_namespaces(self, ctx):
        with open(MARK + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(MARK + ".tmp", MARK)
        time.sleep(1000)


plugin = Blocker()
'''


@pytest.mark.integration
def test_a_serve_child_killed_mid_action_falls_back_to_python(net: Net, procs: Procs, images: Path,
                                                              tmp_path: Path) -> None:
    """A plugin that only the service loads blocks in setup-namespaces; its child is SIGKILLed there."""
    site = tmp_path / "site"
    (site / "blocker_plugin-0.dist-info").mkdir(parents=True)
    (site / "blocker_plugin-0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: blocker-plugin\n"
                                                                  "Version: 0\n")
    (site / "blocker_plugin-0.dist-info" / "entry_points.txt").write_text(
        "[criu_macvlan]\nblocker = blocker_plugin:plugin\n")
    (site / "blocker_plugin.py").write_text(BLOCKER)
    mark = tmp_path / "blocked"
    path = f"/run/criu-macvlan/test-{unique('k')}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({serve.DIR_ENV: path, "CRIU_MACVLAN_DEBUG": "1"})
    parent = dumped(net, procs, images, {**env, serve.DIR_ENV: f"{path}-none"})
    service = subprocess.Popen([str(CLI), "serve", "--dir", path], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**env, "PYTHONPATH": str(site), "BLOCKER_MARK": str(mark)})
    try:
        assert "serving at" in read_line(service.stderr)
        pidfile = images / "restored.pid"
        restoring = subprocess.Popen([CRIU, "restore", "-d", "--pidfile", str(pidfile), *SCRIPT,
                                      f"--external=macvlan[mvr]:{parent}", "-D", str(images), "-v4",
                                      "-o", "restore.log"], env=env)
        try:
            deadline = time.monotonic() + DEADLINE
            while not mark.exists():
                assert time.monotonic() < deadline and restoring.poll() is None, "the served action never ran"
                time.sleep(0.01)
            child = int(mark.read_text())
            stat = Path(f"/proc/{child}/stat").read_text()
            assert int(stat.rsplit(")", 1)[1].split()[1]) == service.pid  # the service's own child
            os.kill(child, signal.SIGKILL)
            assert restoring.wait(timeout=DEADLINE) == 0
        finally:
            if restoring.poll() is None:
                restoring.kill()
                restoring.wait()
        new = procs.adopt(int(pidfile.read_text()))
        assert links_json(new)["mvr"]["link_index"] == links_json()[parent]["ifindex"]
        log = (images / "restore.log").read_text()
        assert "criu-macvlan serve" not in log  # the child never answered: Python ran the action
        assert "criu-macvlan-action: created 1 macvlan link(s): mvr@" in log
        assert service.poll() is None
        assert sorted(os.listdir(path)) == ["pid", "req"]
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=30)


def test_pid_files_are_not_written_through_symlinks(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's own\n")
    victim.chmod(0o600)
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    (run_dir / "pid.tmp").symlink_to(victim)
    fd = rundir.private_dir(str(run_dir))
    try:
        rundir.write_pid(fd)
    finally:
        os.close(fd)
    assert victim.read_text() == "root's own\n"
    assert (run_dir / "pid").read_text() == f"{os.getpid()}\n" and not (run_dir / "pid").is_symlink()
    assert sorted(os.listdir(run_dir)) == ["pid"]
    run_dir.chmod(0o755)
    with pytest.raises(PermissionError):  # not ours alone: nothing is written there
        rundir.private_dir(str(run_dir))


def test_the_shared_caches_are_not_written_through_symlinks(tmp_path: Path) -> None:
    from criu_macvlan import manager

    victim = tmp_path / "victim"
    victim.write_text("root's own\n")
    cache = tmp_path / "share"
    cache.mkdir(mode=0o755)
    (cache / f"handled-actions.{os.getpid()}").symlink_to(victim)  # the temp name it used to write through
    (cache / "handled-actions").symlink_to(victim)
    manager._write_cache(str(cache / "handled-actions"), "pre-dump\n")
    assert victim.read_text() == "root's own\n"
    assert (cache / "handled-actions").read_text() == "pre-dump\n"
    assert not (cache / "handled-actions").is_symlink()
    cache.chmod(0o777)  # others may write there: no cache at all
    manager._write_cache(str(cache / "handled-actions"), "post-dump\n")
    assert (cache / "handled-actions").read_text() == "pre-dump\n"


def stale_dir(pid: int, mtime: float | None = None, announce: bool = False) -> Path:
    path = Path(rundir.announce_dir(pid) if announce else rundir.per_dump_dir(pid))
    path.mkdir(mode=0o700, parents=True)
    os.mkfifo(path / "req", 0o600)
    (path / "pid").write_text(f"{pid}\n")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.mark.integration
def test_pre_dump_sweeps_the_dirs_of_dead_helpers_and_announcers(procs: Procs, images: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    reused = subprocess.Popen(["sleep", "1000"])  # its pid names a dir made long before it started
    live = subprocess.Popen(["sleep", "1000"])
    criu_proc = criu_stand_in(images)
    made = [stale_dir(dead.pid), stale_dir(reused.pid, time.time() - 3600), stale_dir(live.pid),
            stale_dir(dead.pid, announce=True), stale_dir(live.pid, announce=True)]
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CRTOOLS_", "CRIU_MACVLAN_"))}
        env.update(CRTOOLS_SCRIPT_ACTION="pre-dump", CRTOOLS_IMAGE_DIR=f"/proc/{criu_proc.pid}/fd/9",
                   CRTOOLS_INIT_PID=str(procs.tree()))
        res = subprocess.run([str(ACTION_SCRIPT)], env=env, capture_output=True, text=True, timeout=60,
                             check=False)
        assert res.returncode == 0, res.stderr
        ours = Path(rundir.per_dump_dir(criu_proc.pid))
        deadline = time.monotonic() + 10  # the helper pre-dump left writes its pid file on its own time
        while not (ours / "pid").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (ours / "pid").exists()
        assert [p.exists() for p in made] == [False, False, True, False, True]
        assert alive(int((ours / "pid").read_text()))
    finally:
        for p in (reused, live, criu_proc):
            p.kill()
            p.wait()
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
