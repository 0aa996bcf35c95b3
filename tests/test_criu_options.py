"""The criu command line read as CRIU reads it, with the real criu: getopt_long prefixes,
a relative ``--config`` (from the directory criu was started in, not the images dir the
script runs in), and which of two sources naming one link wins."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, CRIU, Net, Procs, alive, ip, link_names, links_json, run
from segment import Segment, configure_l3, ours, wait_listening

from criu_macvlan import images as img

pytestmark = pytest.mark.integration


def criu_in(start: Path, *args: str, images: Path, log: str, env: dict[str, str]) -> None:
    """criu started from ``start`` by a shell (PWD set), logging into ``images``."""
    res = run(CRIU, *args, "-D", str(images), "-v4", "-o", log, check=False, cwd=start, env={**env, "PWD": str(start)})
    if res.returncode != 0:
        tail = (images / log).read_text(errors="replace").splitlines()[-30:] if (images / log).exists() else []
        pytest.fail(f"criu {args[0]} failed ({res.returncode}): {res.stderr}\n" + "\n".join(tail))


def tree_with_macvlan(net: Net, procs: Procs) -> tuple[int, str, str]:
    a, b = net.veth("pa"), net.veth("pb")
    pid = procs.tree()
    net.macvlan_into(pid, "mv0", a, "mode", "bridge")
    ip("link", "set", "mv0", "up", pid=pid)
    return pid, a, b


def parent_of(pid: int, name: str) -> int:
    return int(links_json(pid)[name]["link_index"])


def ifindex(name: str) -> int:
    return int(links_json()[name]["ifindex"])


def test_relative_config_is_criu_start_dirs(net: Net, procs: Procs, images: Path, tmp_path: Path) -> None:
    pid, a, b = tree_with_macvlan(net, procs)
    start = tmp_path / "start"
    start.mkdir()
    (start / "macvlan.conf").write_text(f"action-script {ACTION_SCRIPT}\nexternal macvlan[mv0]:{b}\n")
    # the same name where CRIU and the action script are when the script runs: never read
    (images / "macvlan.conf").write_text(f"external macvlan[mv0]:{a}\n")
    env = dict(os.environ)
    criu_in(start, "dump", "-t", str(pid), "--config", "macvlan.conf", images=images, log="dump.log", env=env)
    assert not alive(pid)
    pidfile = images / "restored.pid"
    criu_in(start, "restore", "-d", "--pidfile", str(pidfile), "--config=macvlan.conf",
            images=images, log="restore.log", env=env)
    new = procs.adopt(int(pidfile.read_text()))
    assert parent_of(new, "mv0") == ifindex(b)
    assert "overrides" not in (images / "restore.log").read_text()


def test_a_config_file_loses_to_the_command_line(net: Net, procs: Procs, images: Path, tmp_path: Path) -> None:
    """A config line and a command-line --external for one link: the command line wins, as in CRIU."""
    pid, a, b = tree_with_macvlan(net, procs)
    conf = tmp_path / "host.conf"  # stands for a host-wide file: read before the command line
    conf.write_text(f"external macvlan[mv0]:{a}\n")
    env = {**os.environ, "CRIU_CONFIG_FILE": str(conf)}
    script = ["--action-script", str(ACTION_SCRIPT)]
    criu_in(tmp_path, "dump", "-t", str(pid), *script, images=images, log="dump.log", env=env)
    pidfile = images / "restored.pid"
    criu_in(tmp_path, "restore", "-d", "--pidfile", str(pidfile), *script, "--exter", f"macvlan[mv0]:{b}",
            images=images, log="restore.log", env=env)
    new = procs.adopt(int(pidfile.read_text()))
    assert parent_of(new, "mv0") == ifindex(b)
    lines = [line for line in (images / "restore.log").read_text().splitlines() if "overrides" in line]
    assert lines, "the losing source is named"
    assert len(set(lines)) == 1
    assert lines[0].endswith(
        f"criu-macvlan-action: macvlan[mv0]:{b} from the command line overrides macvlan[mv0]:{a} "
        f"from {conf} (CRIU uses the last source)"
    )


def test_empty_prefix_is_empty_ns(net: Net, procs: Procs, images: Path, inet_env: dict[str, str]) -> None:
    """``--empty net`` is CRIU's ``--empty-ns net``: CRIU leaves the netns empty, the plugin remakes the link.

    Dumped with CRIU's netns (netdev images), restored into an empty one: only the
    option tells the plugin that CRIU will not make the link this time.
    """
    seg = Segment(net, procs)
    host_before = link_names()
    from segment import SERVER

    pid = procs.tree("python3", "-c", SERVER)
    configure_l3(net, pid, seg.a)
    wait_listening(seg)
    script = ["--action-script", str(ACTION_SCRIPT)]
    criu_in(images, "dump", "-t", str(pid), *script, images=images, log="dump.log", env=inet_env)
    fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sidecar = img.load(fd)
    finally:
        os.close(fd)
    assert sidecar is not None and sidecar.head.empty_ns is False
    pidfile = images / "restored.pid"
    criu_in(images, "restore", "-d", "--pidfile", str(pidfile), *script, "--empty", "net",
            f"--external=macvlan[mvb]:{seg.b}", images=images, log="restore.log", env=inet_env)
    new = procs.adopt(int(pidfile.read_text()))
    assert parent_of(new, "mvb") == ifindex(seg.b)
    wait_listening(seg)
    procs.cleanup()
    assert ours(link_names()) == ours(host_before)
