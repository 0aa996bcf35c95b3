"""Bad images, failed dumps and concurrent restores, with the real criu: one clear error, nothing left behind."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, Net, Procs, alive, criu, ip, link_names, unique

from criu_macvlan import images as img

pytestmark = pytest.mark.integration

SCRIPT = ["--action-script", str(ACTION_SCRIPT)]
_marks = iter(range(100_000))


def marker() -> str:
    """A sleep duration unique to this test run: lets us find every process of a tree by cmdline."""
    return str(200_000 + (os.getpid() % 1000) * 1000 + next(_marks) % 1000)


def pids_running(mark: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[:2] == [b"sleep", mark.encode()] and alive(int(entry)):
                found.append(int(entry))
    return found


def our_files(images: Path) -> list[str]:
    return sorted(n for n in os.listdir(images) if n.startswith(".criu-macvlan"))


def tree_with_macvlans(net: Net, procs: Procs, parent: str, n: int = 2) -> tuple[int, str]:
    mark = marker()
    pid = procs.tree("sleep", mark)
    for i in range(n):
        net.macvlan_into(pid, f"mv{i}", parent, "mode", "bridge")
        ip("link", "set", f"mv{i}", "up", pid=pid)
    return pid, mark


def try_restore(images: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    pidfile = images / "restored.pid"
    return criu("restore", "-d", "--pidfile", str(pidfile), *SCRIPT, *extra,
                images=images, log="restore.log", check=False)


def our_lines(images: Path) -> list[str]:
    log = (images / "restore.log").read_text(errors="replace")
    assert "Traceback" not in log
    return [line for line in log.splitlines() if "criu-macvlan-action:" in line]


def assert_restore_failed_cleanly(res: subprocess.CompletedProcess[str], images: Path, mark: str,
                                  expected: str) -> None:
    assert res.returncode != 0
    lines = our_lines(images)
    assert len(lines) == 1, lines
    assert expected in lines[0], lines[0]
    assert not (images / "restored.pid").exists()
    deadline = time.monotonic() + 5  # CRIU's SIGKILL of the half-restored tasks lands asynchronously
    while pids_running(mark) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pids_running(mark) == [], "a restored task survived"
    assert not link_names() & {"mv0", "mv1"}, "a macvlan landed in the host netns"
    assert our_files(images) == [], "files of ours left in the images dir"


def test_corrupt_sidecar_aborts_restore(net: Net, procs: Procs, images: Path, tmp_path: Path) -> None:
    a, b = net.veth("pa"), net.veth("pb")
    pid, mark = tree_with_macvlans(net, procs, a)
    criu("dump", "-t", str(pid), *SCRIPT, images=images, log="dump.log")
    good = (images / img.SIDECAR).read_bytes()
    maps = ["--external", f"macvlan[mv0]:{b}", "--external", f"macvlan[mv1]:{b}"]
    elsewhere = tmp_path / "elsewhere.img"
    elsewhere.write_bytes(good)
    bad_mac = bytearray(good)
    at = bad_mac.index(b"\x2a\x06") if b"\x2a\x06" in bad_mac else -1  # field 5 (address), length 6
    assert at > 0
    bad_mac[at + 1] = 5  # claim a 5-byte MAC: the entry then mis-parses or fails validation
    cases = {
        "truncated": (good[: len(good) // 2], "macvlan.img: entry at byte"),
        "empty": (b"", "macvlan.img: too short for an image header (0 bytes)"),
        "wrong magic": (good[:4] + b"XXXX" + good[8:], "macvlan.img: wrong magic"),
        "future version": (img.frame(img.MACVLAN_MAGIC, [bytes([8, 9, 16, 0])]),
                           "macvlan.img: format version 9 is newer"),
        "bad entry": (bytes(bad_mac), "macvlan.img: "),
        "symlink": (None, "macvlan.img: is a symlink; refusing to follow it"),
    }
    for what, (data, expected) in cases.items():
        (images / img.SIDECAR).unlink()
        if data is None:
            (images / img.SIDECAR).symlink_to(elsewhere)
        else:
            (images / img.SIDECAR).write_bytes(data)
        res = try_restore(images, *maps)
        assert_restore_failed_cleanly(res, images, mark, expected)
        assert f"setup-namespaces: {expected}" in our_lines(images)[0], what
    # and the good file still restores
    (images / img.SIDECAR).unlink()
    (images / img.SIDECAR).write_bytes(good)
    res = try_restore(images, *maps)
    assert res.returncode == 0, our_lines(images)
    new = procs.adopt(int((images / "restored.pid").read_text()))
    assert link_names(new) == {"lo", "mv0", "mv1"}


def test_missing_sidecar_is_detected(net: Net, procs: Procs, images: Path) -> None:
    a, b = net.veth("pa"), net.veth("pb")
    pid, mark = tree_with_macvlans(net, procs, a)
    criu("dump", "-t", str(pid), *SCRIPT, images=images, log="dump.log")
    (images / img.SIDECAR).unlink()
    res = try_restore(images, "--external", f"macvlan[mv0]:{b}", "--external", f"macvlan[mv1]:{b}")
    assert_restore_failed_cleanly(
        res, images, mark, "macvlan.img is missing but CRIU's images expect criu-macvlan to create"
    )
    assert "criu-macvlan convert --to-native" in our_lines(images)[0]


def test_netdev_not_rewritten_is_detected(net: Net, procs: Procs, images: Path, tmp_path: Path) -> None:
    """A dump made without the plugin, given a sidecar: native MACVLAN entries are refused with advice."""
    a, b = net.veth("pa"), net.veth("pb")
    pid, mark = tree_with_macvlans(net, procs, a)
    with_plugin = tmp_path / "with"
    with_plugin.mkdir()
    criu("dump", "-t", str(pid), "--leave-running", *SCRIPT, images=with_plugin, log="dump.log")
    criu("dump", "-t", str(pid), images=images, log="dump.log")  # no --action-script
    assert not (images / img.SIDECAR).exists()
    shutil.copy(with_plugin / img.SIDECAR, images / img.SIDECAR)
    res = try_restore(images, "--external", f"macvlan[mv0]:{b}", "--external", f"macvlan[mv1]:{b}")
    assert_restore_failed_cleanly(res, images, mark, "CRIU's netdev image still has native macvlan entries")
    assert f"Run 'criu-macvlan convert {images}' once" in our_lines(images)[0]


def test_dump_failing_after_pre_dump_leaves_nothing(net: Net, procs: Procs, images: Path) -> None:
    """The tree holds a unix socket whose peer is outside it: criu fails after pre-dump and resumes the tree."""
    a = net.veth("pa")
    mark = marker()
    ours, theirs = socket.socketpair()
    try:
        pid = procs.tree("sleep", mark, pass_fds=(theirs.fileno(),))
        theirs.close()
        net.macvlan_into(pid, "mv0", a, "mode", "bridge")
        res = criu("dump", "-t", str(pid), *SCRIPT, images=images, log="dump.log", check=False)
    finally:
        ours.close()
    assert res.returncode != 0
    log = (images / "dump.log").read_text(errors="replace")
    assert "Traceback" not in log
    assert "criu-macvlan-action:" not in log  # our hooks had nothing to complain about
    assert alive(pid)  # CRIU resumed the tree
    assert link_names(pid) == {"lo", "mv0"}
    assert not (images / img.SIDECAR).exists()
    assert our_files(images) == []


def test_two_restores_at_once(net: Net, procs: Procs, tmp_path: Path) -> None:
    a, b1, b2 = net.veth("pa"), net.veth("pb"), net.veth("pb")
    dirs = []
    for i in range(2):
        d = tmp_path / f"img{i}"
        d.mkdir()
        pid, _ = tree_with_macvlans(net, procs, a)
        criu("dump", "-t", str(pid), *SCRIPT, images=d, log="dump.log")
        dirs.append(d)
    results: list[subprocess.CompletedProcess[str] | None] = [None, None]

    def go(i: int, parent: str) -> None:
        results[i] = try_restore(dirs[i], "--external", f"macvlan[mv0]:{parent}", "--external",
                                 f"macvlan[mv1]:{parent}")

    threads = [threading.Thread(target=go, args=(i, p)) for i, p in enumerate((b1, b2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, parent in enumerate((b1, b2)):
        res = results[i]
        assert res is not None and res.returncode == 0, our_lines(dirs[i])
        new = procs.adopt(int((dirs[i] / "restored.pid").read_text()))
        assert link_names(new) == {"lo", "mv0", "mv1"}
        parent_index = ip("-o", "link", "show", parent).split(":")[0]
        out = ip("-o", "-d", "link", "show", "mv0", pid=new)
        assert f"@if{parent_index}:" in out, out
        assert our_files(dirs[i]) == []


def test_post_dump_failure_leaves_no_sidecar(net: Net, procs: Procs, images: Path, tmp_path: Path) -> None:
    """Our post-dump fails (a netdev image was swapped for a symlink): the dump fails, nothing of ours stays."""
    a = net.veth("pa")
    pid, _ = tree_with_macvlans(net, procs, a)
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$CRTOOLS_SCRIPT_ACTION" = post-dump ]; then\n'
        '  cd "$CRTOOLS_IMAGE_DIR" && for f in netdev-*.img; do mv "$f" "$f.orig" && ln -s "$f.orig" "$f"; done\n'
        "fi\n"
        f"exec {ACTION_SCRIPT}\n"
    )
    wrapper.chmod(0o755)
    res = criu("dump", "-t", str(pid), "--action-script", str(wrapper), images=images, log="dump.log", check=False)
    assert res.returncode != 0
    log = (images / "dump.log").read_text(errors="replace")
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "criu-macvlan-action:" in line]
    assert len(lines) == 1 and "post-dump: netdev-" in lines[0] and "is a symlink" in lines[0], lines
    assert alive(pid)  # CRIU resumed the tree
    assert link_names(pid) == {"lo", "mv0", "mv1"}
    assert not (images / img.SIDECAR).exists()
    assert our_files(images) == []


def test_dump_without_plugin_then_restore_with_it(net: Net, procs: Procs, images: Path) -> None:
    """No sidecar and native MACVLAN entries: the plugin stays out of the way, CRIU restores them itself."""
    a, b = net.veth("pa"), net.veth("pb")
    pid, _ = tree_with_macvlans(net, procs, a)
    criu("dump", "-t", str(pid), images=images, log="dump.log")  # no --action-script
    res = try_restore(images, "--external", f"macvlan[mv0]:{b}", "--external", f"macvlan[mv1]:{b}")
    lines = our_lines(images)
    assert res.returncode == 0, (images / "restore.log").read_text()[-3000:]
    assert lines == []
    new = procs.adopt(int((images / "restored.pid").read_text()))
    assert link_names(new) == {"lo", "mv0", "mv1"}


def test_restore_failing_at_every_link_position(net: Net, procs: Procs, images: Path) -> None:
    """Four links; the k-th mapping names a parent that refuses new macvlans: CRIU aborts, nothing is left."""
    n = 4
    a = net.veth("pa")
    pid, mark = tree_with_macvlans(net, procs, a, n)
    criu("dump", "-t", str(pid), *SCRIPT, images=images, log="dump.log")
    good = [net.veth("pg") for _ in range(n)]
    blocked = net.veth("pf")
    blocker = unique("pt")
    ip("link", "add", blocker, "link", blocked, "type", "macvlan", "mode", "passthru")  # EINVAL for new ones
    net.created.append(blocker)
    for k in range(n):
        parents = [blocked if i == k else good[i] for i in range(n)]
        maps = [arg for i in range(n) for arg in ("--external", f"macvlan[mv{i}]:{parents[i]}")]
        res = try_restore(images, *maps)
        assert_restore_failed_cleanly(res, images, mark, f"setup-namespaces: cannot create macvlan 'mv{k}' on "
                                      f"'{blocked}': Invalid argument")
        assert not link_names() & {f"mv{i}" for i in range(n)}
    res = try_restore(images, *[arg for i in range(n) for arg in ("--external", f"macvlan[mv{i}]:{good[i]}")])
    assert res.returncode == 0
    new = procs.adopt(int((images / "restored.pid").read_text()))
    assert link_names(new) == {"lo", *(f"mv{i}" for i in range(n))}
