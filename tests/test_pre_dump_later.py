"""pre-dump answers CRIU once the tree's netns is checked and opened, and its links are read after that,
by whatever outlives the answer: the serving child, the per-dump helper, or (no helper) the hook itself
before it exits. Through criu --action-script; a read that fails: test_rpc's parent-inside-the-netns test."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import SCRIPT, Net, Procs, criu, env_for

from criu_macvlan import images as imgs


def _dump(net: Net, procs: Procs, images: Path, env: dict[str, str]) -> str:
    parent = net.veth("la")
    pid = procs.tree()
    net.macvlan_into(pid, "mvl", parent, "mode", "bridge")
    criu("dump", "-t", str(pid), *SCRIPT, images=images, log="dump.log", env=env)
    fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
    try:
        saved = imgs.load(fd)
    finally:
        os.close(fd)
    assert saved is not None and [link.name for link in saved.links] == ["mvl"]
    assert sorted(n for n in os.listdir(images) if "macvlan" in n) == ["macvlan.img"]
    return (images / "dump.log").read_text(errors="replace")


@pytest.mark.integration
def test_the_served_pre_dump_reads_the_links_after_its_answer(net: Net, procs: Procs, images: Path,
                                                             served: tuple[str, subprocess.Popen[str]]) -> None:
    log = _dump(net, procs, images, env_for(served[0]))
    # both lines come from the child serving pre-dump: the first right before it answers
    assert log.index("staged 1 macvlan link(s): mvl") > log.index("ran pre-dump: exit code 0")


@pytest.mark.integration
@pytest.mark.parametrize("helper", [True, False], ids=["per-dump helper", "no helper"])
def test_a_cold_pre_dump_leaves_the_read_to_what_outlives_it(net: Net, procs: Procs, images: Path,
                                                             helper: bool) -> None:
    env = {**os.environ, "CRIU_MACVLAN_SERVE_DIR": "/nonexistent/criu-macvlan-serve", "CRIU_MACVLAN_DEBUG": "1"}
    if not helper:
        env["CRIU_MACVLAN_NO_HELPER"] = "1"
    log = _dump(net, procs, images, env)
    assert ("serves the later actions of criu" in log) == helper
    if not helper:  # the hook read them itself, before CRIU went on
        assert log.index("staged 1 macvlan link(s): mvl") < log.index("Running network-lock scripts")
