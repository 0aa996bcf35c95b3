"""criu-macvlan CLI end to end: real criu (through the RPC driver), real links and namespaces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CRIU, FourLinks, Net, Procs, addrs_json, alive, comparable, criu, ip, leaked, link_names, links_json

from criu_macvlan import images as img
from criu_macvlan import render
from criu_macvlan.errors import ExitCode

pytestmark = pytest.mark.integration


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "criu_macvlan.cli", "--criu", CRIU, *args],
                         capture_output=True, text=True, timeout=120)
    if check and res.returncode != 0:
        pytest.fail(f"criu-macvlan {args[0]} exited {res.returncode}: {res.stderr}")
    return res


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("criu-macvlan: ")
    return lines[0]


def sidecar_of(images: Path) -> img.Sidecar:
    return img.decode((images / "macvlan.img").read_bytes())


def test_cli_dump_restore_show(net: Net, procs: Procs, images: Path) -> None:
    s = FourLinks.make(net, procs)
    b1, b2, pid = s.b1, s.b2, s.pid
    cli("dump", "-t", str(pid), "-D", str(images), "-v4", "-o", "dump.log")
    assert not alive(pid)
    assert "Dumping finished successfully" in (images / "dump.log").read_text()

    table = cli("show", str(images)).stdout
    assert "mvb" in table and "02:42:ac:11:00:02" in table and "10.231.0.2/24" in table
    assert "nopromisc" in table and "src:02:00:00:00:aa:01" in table

    res = cli("restore", "-D", str(images), "-d", "-v4", "-o", "restore.log", "--macvlan", f"mvb:{b1}",
              "--macvlan", f"mvd:{b1}", "--external", f"macvlan[mvv]:{b2}", "--external", f"macvlan[mvs]:{b2}",
              "--pidfile", str(images / "pid"))
    new = procs.adopt(int(res.stdout.strip()))
    assert int((images / "pid").read_text()) == new
    assert alive(new)
    s.assert_moved(new)
    s.assert_nothing_left(procs)


def test_cli_show_json_round_trips_every_field(net: Net, procs: Procs, images: Path) -> None:
    pid = FourLinks.make(net, procs).pid
    ip("route", "add", "10.240.0.0/16", "via", "10.231.0.1", "metric", "7", pid=pid)
    ip("-6", "route", "add", "2001:db8:99::/48", "via", "2001:db8:231::1", pid=pid)
    ip("addr", "add", "10.231.9.9", "peer", "10.231.9.10/32", "dev", "mvb", pid=pid)
    cli("dump", "-t", str(pid), "-D", str(images), "--empty-ns", "net")
    raw = (images / "macvlan.img").read_bytes()
    original = img.decode(raw)
    text = cli("show", str(images), "--json").stdout
    data = json.loads(text)
    mvb = next(lk for lk in data["links"] if lk["name"] == "mvb")
    assert mvb["address"] == "02:42:ac:11:00:02"
    assert {a["address"] for a in mvb["addrs"]} >= {"10.231.0.2", "2001:db8:231::2", "10.231.9.9"}
    assert any(r.get("gateway") == "10.231.0.1" and r.get("dst") == "10.240.0.0" for r in mvb["routes"])
    assert any(r.get("gateway") == "2001:db8:231::1" for r in mvb["routes"])
    assert any(a.get("peer") == "10.231.9.10" for a in mvb["addrs"])
    assert data["head"]["empty_ns"] is True
    back = render.from_json(text)
    assert back.head == original.head
    assert back.links == original.links  # protobuf equality: every field, set or unset
    assert img.encode(back.head, back.links) == raw
    # every field of the schema that the dump set appears in the JSON
    for link, d in zip(original.links, data["links"], strict=True):
        assert {f.name for f, _ in link.ListFields()} == set(d)


def test_cli_check_lists_every_problem(net: Net, procs: Procs, images: Path) -> None:
    a1 = net.veth("pa")
    good, down, small = net.veth("pb"), net.veth("pd", up=False), net.veth("ps", mtu=1300)
    pid = procs.tree()
    for name in ("mv0", "mv1", "mv2", "mv3"):
        net.macvlan_into(pid, name, a1, "mode", "bridge")
    ip("link", "set", "mv2", "mtu", "1400", pid=pid)
    cli("dump", "-t", str(pid), "-D", str(images))
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    gone = net.name("gone")
    target = procs.tree()  # an existing netns to restore into, with a link named like one of ours
    ip("link", "add", "mv3", "type", "veth", "peer", "name", "mv3p", pid=target)
    host_before = link_names()

    res = cli("check", str(images), "--macvlan", f"mv0:{gone}", "--macvlan", f"mv1:{down}",
              "--external", f"macvlan[mv2]:{small}", "--macvlan", f"mv3:{good}", "--netns", str(target), check=False)
    assert res.returncode == ExitCode.CHECK
    assert "Traceback" not in res.stderr
    problems = res.stderr.strip().splitlines()
    assert f"criu-macvlan: mv0: parent {gone!r} does not exist on this host" in problems
    assert f"criu-macvlan: mv1: parent {down!r} is down" in problems
    assert f"criu-macvlan: mv2: MTU 1400 is above the 1300 of parent {small!r}" in problems
    assert any(p.startswith("criu-macvlan: mv3 (ifindex ") and "clashes with 'mv3'" in p for p in problems)
    assert len(problems) == 4, problems

    res = cli("check", str(images), "--macvlan", f"mv0:{good}", check=False)
    assert res.returncode == ExitCode.CHECK
    assert "mv1: no parent given" in res.stderr and "mv3: no parent given" in res.stderr

    ok = cli("check", str(images), *[f"--macvlan=mv{i}:{good}" for i in range(4)])
    assert ok.stdout.startswith("ok: 4 macvlan link(s)")
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before  # changed nothing
    assert leaked(host_before) == set()


def test_cli_convert_images_dumped_without_plugin(net: Net, procs: Procs, images: Path) -> None:
    a1, b1 = net.veth("pa"), net.veth("pb")
    pid = procs.tree()
    net.macvlan_into(pid, "mv0", a1, "mode", "private")
    ip("link", "set", "mv0", "address", "02:11:22:33:44:55", "mtu", "1280", "up", pid=pid)
    ip("addr", "add", "10.235.0.2/24", "dev", "mv0", pid=pid)
    before = comparable(links_json(pid)["mv0"])
    criu("dump", "-t", str(pid), images=images, log="dump.log")  # plain criu, no plugin
    assert not (images / "macvlan.img").exists()

    # unconverted: the mapping goes to CRIU, which restores its own MACVLAN entry
    new = procs.adopt(int(cli("restore", "-D", str(images), "-d", "--macvlan", f"mv0:{b1}").stdout))
    assert comparable(links_json(new)["mv0"]) == before
    assert links_json(new)["mv0"]["link_index"] == links_json()[b1]["ifindex"]
    procs.cleanup()

    assert cli("convert", str(images)).stdout.strip() == "1 netdev entry now EXTLINK (criu-macvlan's)"
    assert [lk.name for lk in sidecar_of(images).links] == ["mv0"]
    assert cli("convert", str(images)).stdout.startswith("0 ")  # idempotent
    new = procs.adopt(int(cli("restore", "-D", str(images), "-d", "--macvlan", f"mv0:{b1}").stdout))
    assert comparable(links_json(new)["mv0"]) == before
    assert addrs_json(new)["mv0"] == {"10.235.0.2/24"}
    assert links_json(new)["mv0"]["link_index"] == links_json()[b1]["ifindex"]
    procs.cleanup()

    assert cli("convert", str(images), "--to-native").stdout.startswith("1 ")
    pidfile = images / "native.pid"
    criu("restore", "-d", "--pidfile", str(pidfile), "--external", f"macvlan[mv0]:{b1}",
         images=images, log="native.log")
    native = procs.adopt(int(pidfile.read_text()))
    assert comparable(links_json(native)["mv0"]) == before


def test_cli_errors_are_one_line(net: Net, procs: Procs, images: Path) -> None:
    a1 = net.veth("pa")
    pid = procs.tree()
    net.macvlan_into(pid, "mv0", a1, "mode", "bridge")
    res = cli("restore", "-D", str(images), "--macvlan", "nocolon", check=False)
    assert res.returncode == ExitCode.USAGE
    assert "bad mapping 'nocolon'" in one_line_error(res)
    res = cli("dump", "-D", str(images), check=False)
    assert res.returncode == ExitCode.USAGE
    assert "-t/--tree" in one_line_error(res)
    res = cli("show", str(images), check=False)
    assert res.returncode == ExitCode.IMAGE
    one_line_error(res)
    cli("dump", "-t", str(pid), "-D", str(images), "-o", "dump.log")
    res = cli("restore", "-D", str(images), "-d", "--macvlan", "mv0:nosuchparent0", check=False)
    assert res.returncode == ExitCode.NETWORK
    assert one_line_error(res) == (
        "criu-macvlan: setup-namespaces: parent 'nosuchparent0' of macvlan 'mv0' does not exist on this host"
    )
    res = cli("--criu", "/nonexistent/criu", "dump", "-t", "1", "-D", str(images), check=False)
    assert res.returncode == ExitCode.CRIU
    one_line_error(res)


def test_cli_restore_waits_for_the_tree(net: Net, procs: Procs, images: Path) -> None:
    a1, b1 = net.veth("pa"), net.veth("pb")
    pid = procs.tree("sh", "-c", "sleep 3; exit 7")
    net.macvlan_into(pid, "mv0", a1, "mode", "bridge")
    cli("dump", "-t", str(pid), "-D", str(images))
    res = cli("restore", "-D", str(images), "--macvlan", f"mv0:{b1}", check=False)
    assert res.returncode == 7
    assert int(res.stdout.strip()) > 0


def test_cli_plugins_and_version() -> None:
    out = cli("plugins").stdout
    assert out.startswith("macvlan: pre-dump post-dump network-unlock setup-namespaces")
    assert "handled actions:" in out
    assert cli("plugins", "--help").returncode == 0
    version = cli("--version").stdout.splitlines()
    assert version[0].startswith("criu-macvlan ") and version[1].startswith("criu ")
