"""runc configured the way a runc user configures it: the real ``/etc/criu/runc.conf``, or
the container's ``org.criu.config`` annotation, and nothing in the environment.

runc runs ``criu swrk`` and hands it the config file over RPC; CRIU rewrites its title
(``criu: restore --rpc -D DIR``) and does not tell scripts the file: the action script
finds it from runc itself (its state or the bundle it moved into). The container's
macvlan sits on parent A; the config file says B: the restore lands on B.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, Net, Procs, alive, ip, link_names
from runc_bundle import BUSYBOX, RUNC, Runc, fetch, mvb_routes, mvb_state
from segment import V4, V6, Segment, addresses, configure_l3, ours

from criu_macvlan import engines, serve

pytestmark = pytest.mark.integration

RUNC_CONF = engines.RUNC_CONFIG


@pytest.fixture
def runc_env(inet_env: dict[str, str]) -> Iterator[dict[str, str]]:
    if RUNC is None or not os.path.exists(BUSYBOX):
        pytest.skip("needs runc and busybox-static (make setup)")
    env = {k: v for k, v in inet_env.items() if not k.startswith(("CRIU_MACVLAN", "CRIU_CONFIG"))}
    yield env


def make(env: dict[str, str], made: list[Runc], userns: bool, annotation: bool) -> Runc:
    c = Runc(env, userns=userns, annotation=annotation)
    made.append(c)
    return c


@pytest.fixture
def containers() -> Iterator[list[Runc]]:
    made: list[Runc] = []
    try:
        yield made
    finally:
        for c in made:
            c.destroy()


def checkpoint_restore_onto_b(c: Runc, net: Net, seg: Segment, userns: bool) -> None:
    pid = c.start_on(net, seg, userns)
    before, addrs_before, routes_before = mvb_state(pid)

    c("checkpoint", "--image-path", str(c.images), "--work-path", str(c.work), c.id)
    assert (c.images / "macvlan.img").exists()
    assert not list(c.images.glob("netdev-*.img"))  # runc always dumps with empty_ns = CLONE_NEWNET
    assert not alive(pid)

    c("restore", "-d", "--image-path", str(c.images), "--work-path", str(c.work), c.id)
    new = c.pid()
    assert fetch(seg, V4) == "hello from the container"
    assert fetch(seg, V6) == "hello from the container"
    after = json.loads(ip("-j", "-d", "link", "show", "dev", "mvb", pid=new))[0]
    for key in ("ifname", "address", "mtu"):
        assert after[key] == before[key], key
    assert before["link_index"] == json.loads(ip("-j", "link", "show", "dev", seg.a))[0]["ifindex"]
    assert after["link_index"] == json.loads(ip("-j", "link", "show", "dev", seg.b))[0]["ifindex"]
    assert addresses(new, "mvb") == addrs_before
    assert mvb_routes(new) == routes_before


@pytest.mark.parametrize("userns", [True, False], ids=["userns", "no-userns"])
def test_runc_conf_recipe(
    net: Net, procs: Procs, runc_env: dict[str, str], containers: list[Runc],
    etc_files: Callable[[str, str], None], userns: bool,
) -> None:
    """docs/engines.md's recipe, exactly: two lines in /etc/criu/runc.conf, no annotation, no variable."""
    seg = Segment(net, procs)
    host_before = link_names()
    etc_files(RUNC_CONF, f"action-script {ACTION_SCRIPT}\nexternal macvlan[mvb]:{seg.b}\n")
    c = make(runc_env, containers, userns=userns, annotation=False)
    checkpoint_restore_onto_b(c, net, seg, userns)
    c.destroy()
    assert ours(link_names()) == ours(host_before)


def test_runc_conf_recipe_served(
    net: Net, procs: Procs, runc_env: dict[str, str], containers: list[Runc],
    etc_files: Callable[[str, str], None], served: tuple[str, subprocess.Popen[str]],
) -> None:
    """The same recipe with `criu-macvlan serve`: its child finds runc's file as Python would."""
    path, proc = served
    seg = Segment(net, procs)
    etc_files(RUNC_CONF, f"action-script {ACTION_SCRIPT}\nexternal macvlan[mvb]:{seg.b}\n")
    env = {**runc_env, serve.DIR_ENV: path, "CRIU_MACVLAN_DEBUG": "1"}
    c = make(env, containers, userns=True, annotation=False)
    checkpoint_restore_onto_b(c, net, seg, userns=True)
    log = (c.work / "restore.log").read_text()
    assert f"criu-macvlan serve (pid {proc.pid}) ran setup-namespaces: exit code 0" in log


def test_annotation_file_replaces_runc_conf(
    net: Net, procs: Procs, runc_env: dict[str, str], containers: list[Runc],
    etc_files: Callable[[str, str], None],
) -> None:
    """org.criu.config names the container's file: runc hands CRIU that one, not runc.conf."""
    seg = Segment(net, procs)
    # runc does not pass runc.conf to CRIU here: were it read, restore would go to A
    etc_files(RUNC_CONF, f"external macvlan[mvb]:{seg.a}\n")
    c = make(runc_env, containers, userns=True, annotation=True)
    c.criu_conf.write_text(f"action-script {ACTION_SCRIPT}\nexternal macvlan[mvb]:{seg.b}\n")
    checkpoint_restore_onto_b(c, net, seg, userns=True)


def test_annotation_naming_a_missing_file(
    net: Net, procs: Procs, runc_env: dict[str, str], containers: list[Runc], tmp_path: Path
) -> None:
    """The annotation's file is gone (say, not copied to the migration target): one line, exit 2, nothing made.

    The action script still runs: CRIU reads it from $CRIU_CONFIG_FILE here.
    """
    seg = Segment(net, procs)
    host_before = link_names()
    script_conf = tmp_path / "script.conf"
    script_conf.write_text(f"action-script {ACTION_SCRIPT}\n")
    env = {**runc_env, "CRIU_CONFIG_FILE": str(script_conf)}
    c = make(env, containers, userns=False, annotation=True)
    c.criu_conf.write_text(f"external macvlan[mvb]:{seg.b}\n")
    c("create", c.id)
    pid = c.pid()
    configure_l3(net, pid, seg.a)
    c("start", c.id)
    c("checkpoint", "--image-path", str(c.images), "--work-path", str(c.work), c.id)

    c.criu_conf.unlink()
    res = c("restore", "-d", "--image-path", str(c.images), "--work-path", str(c.work), c.id, check=False)
    assert res.returncode != 0
    log = (c.work / "restore.log").read_text()
    ours_lines = [line for line in log.splitlines() if "criu-macvlan-action:" in line]
    expected = (f"criu-macvlan-action: setup-namespaces: org.criu.config in {c.dir}/config.json names {c.criu_conf}, "
                "which does not exist")
    assert ours_lines and all(line.endswith(expected) for line in ours_lines), ours_lines
    assert "exited, status=2" in log, log[-2000:]
    assert ours(link_names()) == ours(host_before)  # nothing made on the host
    assert not list(c.root.glob(f"{c.id}/state.json"))  # no container left
