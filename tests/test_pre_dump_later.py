"""pre-dump answers CRIU once the tree's netns is checked and opened, and reads its links after that
(a read that fails: test_rpc's parent-inside-the-netns test, on every path)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import SCRIPT, Net, Procs, criu, env_for


@pytest.mark.integration
def test_the_served_pre_dump_reads_the_links_after_its_answer(net: Net, procs: Procs, images: Path,
                                                             served: tuple[str, subprocess.Popen[str]]) -> None:
    parent = net.veth("la")
    pid = procs.tree()
    net.macvlan_into(pid, "mvl", parent, "mode", "bridge")
    criu("dump", "-t", str(pid), *SCRIPT, images=images, log="dump.log", env=env_for(served[0]))
    log = (images / "dump.log").read_text(errors="replace")
    # both lines come from the child serving pre-dump: the first right before it answers
    assert log.index("staged 1 macvlan link(s): mvl") > log.index("ran pre-dump: exit code 0")
    assert "saved 1 macvlan link(s) in macvlan.img" in log
    assert sorted(n for n in os.listdir(images) if "macvlan" in n) == ["macvlan.img"]
