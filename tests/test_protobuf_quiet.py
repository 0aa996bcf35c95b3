"""An image string that is not valid UTF-8 gives our one line, and no line of protobuf's C++ backend.

That backend logs ``[libprotobuf ERROR ...] String field ... contains invalid UTF-8``
on fd 2 — CRIU's log, for an action script — before handing the field back as
bytes, which the sidecar's validation then reports itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, Net, Procs, criu, dumped

from criu_macvlan import images, netdev
from criu_macvlan import macvlan_pb2 as pb


def bad_name_sidecar() -> bytes:
    link = pb.macvlan_link(name="mvX", ifindex=3, mode=4, address=b"\x02" * 6, mtu=1500, link_flags=1)
    raw = link.SerializeToString().replace(b"mvX", b"mv\xff")
    return images.frame(images.MACVLAN_MAGIC, [pb.macvlan_head(version=1, n_links=1).SerializeToString(), raw])


def bad_name_netdev() -> bytes:
    entry = netdev.netdev_entry_class()(type=1, ifindex=1, mtu=65536, flags=0, name="loX")
    return images.frame(netdev.NETDEV_MAGIC, [entry.SerializeToString().replace(b"loX", b"lo\xff")])


def test_decoding_writes_nothing_to_stderr(tmp_path: Path) -> None:
    (tmp_path / "macvlan.img").write_bytes(bad_name_sidecar())
    (tmp_path / "netdev-9.img").write_bytes(bad_name_netdev())
    probe = (
        "import os, sys\n"
        "from criu_macvlan import images, netdev\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "try:\n"
        "    images.load(fd)\n"
        "except images.ImageError as exc:\n"
        "    print(exc)\n"
        "print(netdev.summarize_netdev(fd, 'netdev-9.img').devices)\n"
    )
    res = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True,
                         timeout=60, check=True)
    assert res.stderr == ""
    assert res.stdout.splitlines() == ["macvlan.img: link name b'mv\\xff' is not valid UTF-8", "[(b'lo\\xff', 1)]"]


def test_stderr_works_after_decoding(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(images.ImageError):
        images.decode(bad_name_sidecar())
    print("still here", file=sys.stderr, flush=True)
    assert capfd.readouterr().err == "still here\n"


@pytest.mark.integration
def test_restore_log_has_our_line_only(net: Net, procs: Procs, images: Path) -> None:
    _, b = dumped(net, procs, images)
    script = ["--action-script", str(ACTION_SCRIPT)]
    data = (images / "macvlan.img").read_bytes()
    (images / "macvlan.img").write_bytes(data.replace(b"mv0", b"mv\xff"))
    res = criu("restore", "-d", *script, "--external", f"macvlan[mv0]:{b}", images=images, log="restore.log",
               check=False, timeout=120)
    assert res.returncode != 0
    log = (images / "restore.log").read_text(errors="replace")
    assert "libprotobuf" not in log
    ours = [line for line in log.splitlines() if "criu-macvlan-action:" in line]
    assert ours == ["criu-macvlan-action: setup-namespaces: macvlan.img: link name b'mv\\xff' is not valid UTF-8"]
