"""Interface names: validated exactly as the kernel's ``dev_valid_name``, with real links."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, Net, Procs, criu, link_names

from criu_macvlan.errors import UsageError
from criu_macvlan.mappings import check_ifname

pytestmark = pytest.mark.integration

# every code point up to U+00FF between two letters, plus blanks and dots of other kinds
CANDIDATES = [f"a{chr(c)}b" for c in range(1, 256)] + [
    "e\u2003x", "\u3000", "\u2028", "x\ufeff", ".", "..", "...", "a" * 15, "a" * 16, "\u00e9" * 7 + "x", "\u00e9" * 8,
]

PROBE = """
import json, sys
from pyroute2 import IPRoute
accepted = []
with IPRoute() as ipr:
    for name in json.load(sys.stdin):
        try:
            ipr.link("add", ifname=name, kind="bridge")
        except Exception:
            continue
        made = ipr.link_lookup(ifname=name)  # a name with '%' is a template: the link gets another name
        if made:
            accepted.append(name)
            ipr.link("del", index=made[0])
json.dump(accepted, sys.stdout)
"""


def test_check_ifname_agrees_with_the_kernel() -> None:
    """Each candidate name in a private netns: a link of that very name can exist iff we accept it."""
    res = subprocess.run(["unshare", "--net", sys.executable, "-c", PROBE], input=json.dumps(CANDIDATES),
                         capture_output=True, text=True, check=True, timeout=120)
    kernel = set(json.loads(res.stdout))
    assert "e\u2003x" in kernel and "a\x1fb" in kernel and "a\u00a0b" not in kernel  # the probe works

    def ours(name: str) -> bool:
        try:
            check_ifname(name)
        except UsageError:
            return False
        return True

    disagree = [name for name in CANDIDATES if ours(name) != (name in kernel)]
    assert disagree == []


def test_dump_and_restore_names_python_calls_blank(net: Net, procs: Procs, images: Path) -> None:
    """``e<EM SPACE>x`` and ``a<US>b`` (Python's str.isspace() says True, the kernel accepts them)."""
    a, b = net.veth("pa"), net.veth("pb")
    names = ["e\u2003x", "a\x1fb"]
    pid = procs.tree()
    for name in names:
        net.macvlan_into(pid, name, a, "mode", "bridge")
    script = ["--action-script", str(ACTION_SCRIPT)]
    criu("dump", "-t", str(pid), *script, images=images, log="dump.log")
    maps = [arg for name in names for arg in ("--external", f"macvlan[{name}]:{b}")]
    pidfile = images / "restored.pid"
    criu("restore", "-d", "--pidfile", str(pidfile), *script, *maps, images=images, log="restore.log")
    new = procs.adopt(int(pidfile.read_text()))
    assert link_names(new) == {"lo", *names}
