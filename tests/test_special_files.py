"""A FIFO, socket, device or directory where an image file belongs: refused at once, never waited on.

Each file role the plugin reads (``macvlan.img``, the stage, ``netdev-<id>.img``)
and each command reading it (``show``, ``check``, ``convert``). Every read here
runs under a deadline: a read that blocks fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest
from helpers import ACTION_SCRIPT, CRIU, Net, Procs, alive, criu, dumped

from criu_macvlan import images, netdev
from criu_macvlan.errors import ExitCode, ImageError

KINDS = {
    "fifo": "a FIFO",
    "socket": "a socket",
    "chardev": "a character device",
    "dir": "a directory",
}


def plant(path: Path, kind: str) -> None:
    """Make ``path`` a special file of ``kind``."""
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as sk:
            sk.bind(str(path))  # the socket file stays after close
    elif kind == "chardev":
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    else:
        path.mkdir()


@pytest.fixture
def deadline() -> Iterator[None]:
    """Interrupt a blocked read (an open of a FIFO waits for a writer) after 10 s."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError("the read blocked")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, 10)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def kinds() -> list[str]:
    return [k for k in KINDS if k != "chardev" or os.geteuid() == 0]


def _load(fd: int) -> object:
    return images.load(fd)


def _stage(fd: int) -> object:
    return images.read_file(fd, images.STAGED)


def _netdev(fd: int) -> object:
    return netdev.read_netdev(fd, "netdev-9.img")


ROLES: dict[str, tuple[str, Callable[[int], object]]] = {
    "sidecar": (images.SIDECAR, _load),
    "stage": (images.STAGED, _stage),
    "netdev": ("netdev-9.img", _netdev),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", kinds())
def test_special_file_is_refused(tmp_path: Path, deadline: None, role: str, kind: str) -> None:
    name, read = ROLES[role]
    plant(tmp_path / name, kind)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ImageError) as info:
            read(fd)
    finally:
        os.close(fd)
    assert str(info.value) == f"{name}: is {KINDS[kind]}, not a regular file"
    assert info.value.exit_code == ExitCode.IMAGE


def test_regular_file_above_the_cap_is_refused_before_reading(tmp_path: Path) -> None:
    big = tmp_path / images.SIDECAR
    with open(big, "wb") as f:
        f.truncate(images.MAX_IMAGE_BYTES + 1)  # sparse: costs no disk
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ImageError, match=rf"^macvlan\.img: larger than {images.MAX_IMAGE_BYTES} bytes$"):
            images.load(fd)
    finally:
        os.close(fd)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    # the timeout is a deadline for a hang, not a speed check
    return subprocess.run([sys.executable, "-m", "criu_macvlan.cli", *args],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("command", ["show", "check", "convert"])
@pytest.mark.parametrize("kind", ["fifo", "dir"])
def test_cli_commands_refuse_a_special_sidecar(tmp_path: Path, command: str, kind: str) -> None:
    plant(tmp_path / images.SIDECAR, kind)
    (tmp_path / "netdev-9.img").write_bytes(images.frame(netdev.NETDEV_MAGIC, []))
    res = cli(command, str(tmp_path))
    lines = res.stderr.strip().splitlines()
    assert lines == [f"criu-macvlan: macvlan.img: is {KINDS[kind]}, not a regular file"], res.stderr
    assert res.returncode == (ExitCode.CHECK if command == "check" else ExitCode.IMAGE)


@pytest.mark.parametrize("command", ["check", "convert"])
def test_cli_commands_refuse_a_fifo_netdev_image(tmp_path: Path, command: str) -> None:
    os.mkfifo(tmp_path / "netdev-9.img", 0o600)
    res = cli(command, str(tmp_path))
    lines = res.stderr.strip().splitlines()
    assert lines == ["criu-macvlan: netdev-9.img: is a FIFO, not a regular file"], res.stderr
    assert res.returncode == (ExitCode.CHECK if command == "check" else ExitCode.IMAGE)


# ------------------------------------------------- with the real criu (root)

SCRIPT = ["--action-script", str(ACTION_SCRIPT)]
STAGED = images.STAGED


def swap(path: Path, kind: str) -> None:
    path.unlink()
    plant(path, kind)


def netdev_of(images_dir: Path) -> Path:
    (found,) = images_dir.glob("netdev-*.img")
    return found


@pytest.mark.integration
def test_restore_refuses_special_files(net: Net, procs: Procs, images: Path) -> None:
    """Action script and CLI: a FIFO or directory as macvlan.img, a FIFO as the netdev image."""
    _, b = dumped(net, procs, images)
    netdev = netdev_of(images)
    keep = {p: p.read_bytes() for p in (images / "macvlan.img", netdev)}
    cases = [(images / "macvlan.img", "fifo"), (images / "macvlan.img", "dir"), (netdev, "fifo")]
    for path, kind in cases:
        swap(path, kind)
        expected = f"setup-namespaces: {path.name}: is {KINDS[kind]}, not a regular file"
        res = criu("restore", "-d", *SCRIPT, "--external", f"macvlan[mv0]:{b}", images=images, timeout=60,
                   log="restore.log", check=False)
        assert res.returncode != 0
        log = (images / "restore.log").read_text(errors="replace")
        ours = [line for line in log.splitlines() if "criu-macvlan-action:" in line]
        assert ours == [f"criu-macvlan-action: {expected}"], ours
        res = cli("--criu", CRIU, "restore", "-D", str(images), "-d", "--macvlan", f"mv0:{b}")
        assert res.stderr.strip().splitlines() == [f"criu-macvlan: {expected}"], res.stderr
        assert res.returncode == ExitCode.IMAGE
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink()
        path.write_bytes(keep[path])
    res = cli("--criu", CRIU, "restore", "-D", str(images), "-d", "--macvlan", f"mv0:{b}")
    assert res.returncode == 0, res.stderr
    procs.adopt(int(res.stdout))


@pytest.mark.integration
def test_dump_refuses_a_fifo_netdev_image(net: Net, procs: Procs, tmp_path: Path) -> None:
    """An extra FIFO netdev image (action script and CLI): the dump fails and the tree runs on."""
    a = net.veth("pa")
    pid = procs.tree()
    net.macvlan_into(pid, "mv0", a, "mode", "bridge")
    expected = "post-dump: netdev-98.img: is a FIFO, not a regular file"
    for path in ("script", "cli"):
        d = tmp_path / path
        d.mkdir()
        os.mkfifo(d / "netdev-98.img", 0o600)
        if path == "script":
            res = criu("dump", "-t", str(pid), *SCRIPT, images=d, log="dump.log", check=False, timeout=60)
            log = (d / "dump.log").read_text(errors="replace")
            ours = [line for line in log.splitlines() if "criu-macvlan-action:" in line]
            assert ours == [f"criu-macvlan-action: {expected}"], ours
        else:
            res = cli("--criu", CRIU, "dump", "-t", str(pid), "-D", str(d))
            assert res.stderr.strip().splitlines() == [f"criu-macvlan: {expected}"], res.stderr
            assert res.returncode == ExitCode.IMAGE
        assert res.returncode != 0
        assert alive(pid)  # CRIU resumed the tree
        assert not (d / "macvlan.img").exists()


@pytest.mark.integration
def test_dump_refuses_a_fifo_stage(net: Net, procs: Procs, images: Path, tmp_path: Path) -> None:
    """The stage swapped for a FIFO before post-dump (served by the warm helper pre-dump left)."""
    a = net.veth("pa")
    pid = procs.tree()
    net.macvlan_into(pid, "mv0", a, "mode", "bridge")
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$CRTOOLS_SCRIPT_ACTION" = post-dump ]; then\n'
        f'  cd "$CRTOOLS_IMAGE_DIR" && rm {STAGED} && mkfifo {STAGED}\n'
        "fi\n"
        f"exec {ACTION_SCRIPT}\n"
    )
    wrapper.chmod(0o755)
    res = criu("dump", "-t", str(pid), "--action-script", str(wrapper), images=images, log="dump.log", check=False,
               timeout=90)
    assert res.returncode != 0
    log = (images / "dump.log").read_text(errors="replace")
    ours = [line for line in log.splitlines() if "criu-macvlan-action:" in line]
    assert ours == [f"criu-macvlan-action: post-dump: {STAGED}: is a FIFO, not a regular file"], ours
    assert alive(pid)
    assert not (images / "macvlan.img").exists()
