"""CRIU's netdev images are bounded like our sidecar: entries, bytes and memory.

A planted ``netdev-98.img`` of 64 MiB of empty entries (16 million of them) is
refused at once with one line, not parsed entry by entry; the test asserts the
error (and, in a child process with a capped address space, that no memory
blow-up comes first), never a time.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, Net, Procs, criu, dumped

from criu_macvlan import images, netdev
from criu_macvlan.errors import ExitCode, ImageError

EMPTY_ENTRY = b"\0\0\0\0"  # a size field of 0: an entry with no bytes


def planted(d: Path, entries: int, payload: bytes = b"") -> Path:
    path = d / "netdev-98.img"
    with open(path, "wb") as f:
        f.write(images.frame(netdev.NETDEV_MAGIC, []))
        f.write((len(payload).to_bytes(4, "little") + payload) * entries)
    return path


def read(d: Path) -> netdev.NetdevSummary:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return netdev.summarize_netdev(fd, "netdev-98.img")
    finally:
        os.close(fd)


def test_empty_entry_is_refused(tmp_path: Path) -> None:
    planted(tmp_path, 1)
    with pytest.raises(ImageError) as info:
        read(tmp_path)
    assert str(info.value) == "netdev-98.img: entry #0 lacks required fields: type, ifindex, mtu, flags, name"
    assert info.value.exit_code == ExitCode.IMAGE


def test_64_mib_of_empty_entries_is_refused(tmp_path: Path) -> None:
    planted(tmp_path, (images.MAX_IMAGE_BYTES - 8) // len(EMPTY_ENTRY))
    with pytest.raises(ImageError, match=rf"^netdev-98\.img: more than {netdev.MAX_NETDEV_ENTRIES} entries$"):
        read(tmp_path)


def test_too_many_valid_entries_are_refused(tmp_path: Path) -> None:
    entry = netdev.netdev_entry_class()(type=1, ifindex=1, mtu=65536, flags=0, name="lo").SerializeToString()
    planted(tmp_path, netdev.MAX_NETDEV_ENTRIES, entry)
    assert len(read(tmp_path).native) == 0  # at the limit: fine
    planted(tmp_path, netdev.MAX_NETDEV_ENTRIES + 1, entry)
    with pytest.raises(ImageError, match=rf"^netdev-98\.img: more than {netdev.MAX_NETDEV_ENTRIES} entries$"):
        read(tmp_path)


def _cap_memory() -> None:
    # far above what a check of real images needs, far below what parsing 16 million entries takes
    limit = 1 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_check_of_a_planted_netdev_image_stays_small(tmp_path: Path) -> None:
    """``criu-macvlan check`` with 1 GiB of address space: one line naming the file, not a MemoryError."""
    planted(tmp_path, (images.MAX_IMAGE_BYTES - 8) // len(EMPTY_ENTRY))
    res = subprocess.run([sys.executable, "-m", "criu_macvlan.cli", "check", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, check=False, preexec_fn=_cap_memory)
    assert res.stderr.strip().splitlines() == [
        f"criu-macvlan: netdev-98.img: more than {netdev.MAX_NETDEV_ENTRIES} entries"
    ], res.stderr
    assert res.returncode == ExitCode.CHECK


@pytest.mark.integration
def test_restore_with_a_planted_netdev_image_fails_in_one_line(net: Net, procs: Procs, images: Path) -> None:
    """16 MiB of empty entries next to a real dump: the action script refuses it at once."""
    _, b = dumped(net, procs, images)
    script = ["--action-script", str(ACTION_SCRIPT)]
    planted(images, (16 << 20) // len(EMPTY_ENTRY))
    res = criu("restore", "-d", *script, "--external", f"macvlan[mv0]:{b}", images=images, log="restore.log",
               check=False, timeout=120)
    assert res.returncode != 0
    log = (images / "restore.log").read_text(errors="replace")
    ours = [line for line in log.splitlines() if "criu-macvlan-action:" in line]
    assert ours == [
        f"criu-macvlan-action: setup-namespaces: netdev-98.img: more than {netdev.MAX_NETDEV_ENTRIES} entries"
    ]
