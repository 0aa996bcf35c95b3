"""The RPC driver (criu swrk + NOTIFY loop) with the real criu, links and namespaces."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers import (
    CRIU,
    FourLinks,
    Net,
    Procs,
    addrs_json,
    alive,
    comparable,
    ip,
    leaked,
    link_names,
    links_json,
    wait_unshared,
)

from criu_macvlan.context import ActionContext
from criu_macvlan.errors import CriuError, ExitCode, HookError
from criu_macvlan.hookspecs import hookimpl
from criu_macvlan.manager import Hooks, plugin_manager
from criu_macvlan.rpc import Criu, Notify

pytestmark = pytest.mark.integration


def restore(criu: Criu, images: Path, procs: Procs, maps: dict[str, str] | None, **opts: Any) -> int:
    return procs.adopt(criu.restore(str(images), maps, log_file="restore.log", log_level=4, **opts))


def dump(criu: Criu, pid: int, images: Path, **opts: Any) -> None:
    criu.dump(pid, str(images), log_file="dump.log", log_level=4, **opts)


class Recorder(Notify):
    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[str, int | None]] = []
        self.fail_on = fail_on
        self.links_at_setup: set[str] = set()

    def _rec(self, name: str, pid: int | None = None) -> None:
        self.calls.append((name, pid))
        if name == self.fail_on:
            raise RuntimeError(f"callback {name} says no")

    def pre_dump(self) -> None:
        self._rec("pre_dump")

    def post_dump(self) -> None:
        self._rec("post_dump")

    def network_lock(self) -> None:
        self._rec("network_lock")

    def network_unlock(self) -> None:
        self._rec("network_unlock")

    def pre_restore(self) -> None:
        self._rec("pre_restore")

    def setup_namespaces(self, pid: int) -> None:
        self.links_at_setup = link_names(pid)
        self._rec("setup_namespaces", pid)

    def post_setup_namespaces(self) -> None:
        self._rec("post_setup_namespaces")

    def post_restore(self, pid: int) -> None:
        self._rec("post_restore", pid)

    def pre_resume(self) -> None:
        self._rec("pre_resume")

    def post_resume(self) -> None:
        self._rec("post_resume")


class FailIn:
    """A test plugin that fails one action; see :func:`fail_in`."""

    seen_links: ClassVar[set[str]] = set()


def fail_in(hook: str) -> FailIn:
    def fail(self: FailIn, ctx: ActionContext) -> None:
        from criu_macvlan.errors import CriuMacvlanError

        if ctx.pid:
            self.seen_links = link_names(ctx.pid)
        raise CriuMacvlanError(f"test plugin refuses {ctx.action}")

    cls = type("FailIn", (FailIn,), {hook: hookimpl(fail)})
    return cls()  # type: ignore[no-any-return]


def hooks_with(plugin: object) -> Hooks:
    hooks = plugin_manager(entry_points=False)
    hooks.pm.register(plugin, name="failin")
    return hooks


def test_rpc_dump_restore_onto_other_parents(net: Net, procs: Procs, images: Path) -> None:
    s = FourLinks.make(net, procs)
    b1, b2, pid = s.b1, s.b2, s.pid
    rec = Recorder()
    criu = Criu(CRIU, notify=rec)

    dump(criu, pid, images)
    assert not alive(pid)
    assert (images / "macvlan.img").exists()
    assert not [n for n in os.listdir(images) if n.startswith(".criu-macvlan")]
    assert [c for c, _ in rec.calls] == ["pre_dump", "network_lock", "post_dump"]

    rec.calls.clear()
    maps = {"mvb": b1, "mvd": b1}  # the other two arrive as CRIU-style externals
    new = restore(criu, images, procs, maps, external=[f"macvlan[mvv]:{b2}", f"macvlan[mvs]:{b2}"])
    assert alive(new)
    names = [c for c, _ in rec.calls]
    assert names == ["pre_restore", "setup_namespaces", "post_setup_namespaces", "post_restore",
                     "network_unlock", "pre_resume", "post_resume"]
    assert ("setup_namespaces", new) in rec.calls and ("post_restore", new) in rec.calls
    assert {"mvb", "mvv", "mvd", "mvs"} <= rec.links_at_setup  # ours ran before the callback
    s.assert_moved(new)
    s.assert_nothing_left(procs)


def test_rpc_hook_failure_mid_restore_aborts_cleanly(net: Net, procs: Procs, images: Path) -> None:
    a1, b1 = net.veth("pa"), net.veth("pb")
    pid = procs.tree()
    net.macvlan_into(pid, "mv0", a1, "mode", "bridge")
    dump(Criu(CRIU), pid, images)
    host_before = link_names()
    failer = fail_in("criu_post_setup_namespaces")
    criu = Criu(CRIU, hooks=hooks_with(failer))
    with pytest.raises(HookError) as err:
        criu.restore(str(images), {"mv0": b1}, log_file="restore.log", log_level=4)
    assert str(err.value) == "post-setup-namespaces: test plugin refuses post-setup-namespaces"
    assert "mv0" in failer.seen_links  # our link existed when the test plugin failed ...
    assert "RPC client reported script error" in err.value.log_tail
    assert "Restoring FAILED" in (images / "restore.log").read_text()
    assert leaked(host_before) == set()  # ... and died with the half-restored netns
    # the parent is free again: the same restore now succeeds
    new = restore(Criu(CRIU), images, procs, {"mv0": b1})
    assert links_json(new)["mv0"]["link_index"] == links_json()[b1]["ifindex"]


def test_rpc_missing_parent_and_mapping(net: Net, procs: Procs, images: Path) -> None:
    a1 = net.veth("pa")
    pid = procs.tree()
    net.macvlan_into(pid, "mv0", a1, "mode", "bridge")
    dump(Criu(CRIU), pid, images)
    host_before = link_names()
    gone = net.name("gone")
    with pytest.raises(HookError) as err:
        Criu(CRIU).restore(str(images), {"mv0": gone}, log_file="restore.log")
    assert err.value.exit_code == ExitCode.NETWORK
    assert str(err.value) == f"setup-namespaces: parent {gone!r} of macvlan 'mv0' does not exist on this host"
    with pytest.raises(HookError, match=r"no parent given for macvlan\[mv0\]:OUT"):
        Criu(CRIU).restore(str(images), {}, log_file="restore.log")
    assert leaked(host_before) == set()


def test_rpc_callback_failure_aborts_dump_and_drops_stage(net: Net, procs: Procs, images: Path) -> None:
    a1 = net.veth("pa")
    pid = procs.tree()
    net.macvlan_into(pid, "mv0", a1, "mode", "bridge")
    rec = Recorder(fail_on="network_lock")
    with pytest.raises(HookError, match="network-lock: callback failed: RuntimeError: callback network_lock says no"):
        dump(Criu(CRIU, notify=rec), pid, images)
    assert alive(pid)  # CRIU resumed the tree
    assert "network_unlock" in [c for c, _ in rec.calls]  # still delivered after the failure
    assert not [n for n in os.listdir(images) if n.startswith(".criu-macvlan")]
    assert not (images / "macvlan.img").exists()
    assert "mv0" in link_names(pid)


def _dirty_tracking() -> bool:
    return subprocess.run([CRIU, "check", "--feature", "mem_dirty_track"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _dirty_tracking(), reason="kernel without soft-dirty memory tracking: no pre-dump")
def test_rpc_iterative_migration(net: Net, procs: Procs, tmp_path: Path) -> None:
    a1, b1 = net.veth("pa"), net.veth("pb")
    pid = procs.tree()
    net.macvlan_into(pid, "mv0", a1, "mode", "bridge")
    ip("link", "set", "mv0", "up", pid=pid)
    pre, final = tmp_path / "pre1", tmp_path / "final"
    pre.mkdir()
    final.mkdir()
    criu = Criu(CRIU)
    criu.pre_dump(pid, str(pre), track_mem=True, log_file="pre.log")
    assert alive(pid)
    assert not (pre / "macvlan.img").exists()
    dump(criu, pid, final, track_mem=True, parent_img="../pre1")
    assert (final / "parent").is_symlink()
    assert (final / "macvlan.img").exists()
    new = restore(criu, final, procs, {"mv0": b1})
    link = links_json(new)["mv0"]
    assert link["link_index"] == links_json()[b1]["ifindex"]
    assert "UP" in link["flags"]


def test_rpc_empty_ns_restores_l3(net: Net, procs: Procs, images: Path) -> None:
    a1, b1 = net.veth("pa"), net.veth("pb")
    pid = procs.tree()
    net.macvlan_into(pid, "mv0", a1, "mode", "bridge")
    ip("link", "set", "mv0", "mtu", "1300", "up", pid=pid)
    ip("addr", "add", "10.233.0.2/24", "dev", "mv0", pid=pid)
    ip("route", "add", "10.234.0.0/16", "via", "10.233.0.1", pid=pid)
    before = comparable(links_json(pid)["mv0"])
    criu = Criu(CRIU)
    dump(criu, pid, images, empty_ns_net=True)
    assert not list(images.glob("netdev-*.img"))
    new = restore(criu, images, procs, {"mv0": b1}, empty_ns_net=True)
    assert comparable(links_json(new)["mv0"]) == before
    assert addrs_json(new)["mv0"] == {"10.233.0.2/24"}
    assert "10.234.0.0/16 via 10.233.0.1" in ip("route", "show", pid=new)


def test_rpc_leave_running(net: Net, procs: Procs, images: Path) -> None:
    a1 = net.veth("pa")
    pid = procs.tree()
    net.macvlan_into(pid, "mv0", a1, "mode", "bridge")
    dump(Criu(CRIU), pid, images, leave_running=True)
    assert alive(pid)
    assert "mv0" in link_names(pid)
    assert (images / "macvlan.img").exists()


def test_rpc_criu_failure_after_pre_dump(net: Net, procs: Procs, images: Path) -> None:
    """CRIU fails on its own (an inherited pipe): CriuError with its log; the stage is dropped."""
    a1 = net.veth("pa")
    p = subprocess.Popen(["unshare", "--net", "sleep", "100000"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    procs.popens.append(p)
    pid = wait_unshared(procs.adopt(p.pid))
    net.macvlan_into(pid, "mv0", a1, "mode", "bridge")
    rec = Recorder()
    with pytest.raises(CriuError) as err:
        dump(Criu(CRIU, notify=rec), pid, images)
    assert err.value.exit_code == ExitCode.CRIU
    assert "criu dump failed" in str(err.value)
    assert "Dumping FAILED" in err.value.log_tail
    assert rec.calls[0] == ("pre_dump", None)
    assert not [n for n in os.listdir(images) if n.startswith(".criu-macvlan")]
    assert not (images / "macvlan.img").exists()
    assert alive(pid)
    p.stdout.close()  # type: ignore[union-attr]


def test_version_and_check() -> None:
    criu = Criu(CRIU)
    assert criu.version().startswith(("3.", "4."))
    criu.check()
    with pytest.raises(CriuError, match="not found"):
        Criu("/nonexistent/criu").version()


@pytest.mark.parametrize("how", ["rpc", "action-script", "served"])
def test_parent_inside_the_dumped_netns_is_refused(procs: Procs, images: Path, how: str,
                                                   request: pytest.FixtureRequest) -> None:
    """The links are read while CRIU goes on (over RPC from the request on, with the action script after
    pre-dump's answer), so the refusal comes at post-dump, once; CRIU resumes the tree."""
    from helpers import ACTION_SCRIPT, criu, env_for

    pid = procs.tree()
    ip("link", "add", "vin", "type", "veth", "peer", "name", "vinp", pid=pid)
    ip("link", "add", "mvin", "link", "vin", "type", "macvlan", "mode", "bridge", pid=pid)
    refusal = "post-dump: macvlan 'mvin' sits on a parent inside the dumped network namespace"
    if how == "rpc":
        with pytest.raises(HookError) as err:
            dump(Criu(CRIU), pid, images)
        assert str(err.value).startswith(refusal)
    else:
        env = env_for(request.getfixturevalue("served")[0]) if how == "served" else None
        res = criu("dump", "-t", str(pid), "--action-script", str(ACTION_SCRIPT), images=images, log="dump.log",
                   check=False, env=env)
        assert res.returncode != 0
        log = (images / "dump.log").read_text()
        assert [line for line in log.splitlines() if "sits on a parent" in line] == [
            f"criu-macvlan-action: {refusal} (ifindex {links_json(pid)['vin']['ifindex']}); only parents outside "
            "it can be remapped"]
    assert alive(pid)
    assert not (images / "macvlan.img").exists()
    assert not [n for n in os.listdir(images) if n.startswith(".criu-macvlan")]


def test_rpc_restore_uses_requests_encoded_ahead_unless_a_parent_changed(
    net: Net, procs: Procs, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The links' requests are encoded while CRIU starts; a parent re-created meanwhile gets fresh ones."""
    from criu_macvlan import netlink

    a, b = net.veth("pa"), net.veth("pb")
    pid = procs.tree()
    net.macvlan_into(pid, "mv0", a, "mode", "bridge")
    dump(Criu(CRIU), pid, images)
    used: list[str] = []
    real_prepared, real_plain = netlink.Rtnl.create_prepared, netlink.Rtnl.create_macvlans
    monkeypatch.setattr(netlink.Rtnl, "create_prepared",
                        lambda self, *a: used.append("prepared") or real_prepared(self, *a))
    monkeypatch.setattr(netlink.Rtnl, "create_macvlans",
                        lambda self, *a: used.append("plain") or real_plain(self, *a))

    first = restore(Criu(CRIU), images, procs, {"mv0": b})
    assert used == ["prepared"]
    assert links_json(first)["mv0"]["link_index"] == links_json()[b]["ifindex"]
    procs.cleanup()

    class Recreate:
        """Replaces parent ``b`` by a new veth of the same name (a new ifindex) at pre-restore."""

        @hookimpl
        def criu_pre_restore(self, ctx: ActionContext) -> None:
            ip("link", "del", b)
            ip("link", "add", b, "type", "veth", "peer", "name", b + "p")
            ip("link", "set", b, "up")
            ip("link", "set", b + "p", "up")

    used.clear()
    old_index = links_json()[b]["ifindex"]
    second = restore(Criu(CRIU, hooks=hooks_with(Recreate())), images, procs, {"mv0": b})
    assert used == ["plain"]
    assert links_json()[b]["ifindex"] != old_index
    assert links_json(second)["mv0"]["link_index"] == links_json()[b]["ifindex"]


def test_a_macvlan_whose_ifindex_a_host_link_has_is_restored(net: Net, procs: Procs, images: Path) -> None:
    """CRIU's own restore fails on it (its RTM_NEWLINK has no NLM_F_EXCL); ours uses NLM_F_EXCL."""
    a, b = net.veth("pa"), net.veth("pb")
    taken = links_json()[a]["ifindex"]  # an ifindex the host (CRIU's netns) has for sure
    pid = procs.tree()
    ip("link", "add", "mvc", "link", a, "netns", str(pid), "index", str(taken), "type", "macvlan", "mode", "bridge")
    dump(Criu(CRIU), pid, images)
    new = restore(Criu(CRIU), images, procs, {"mvc": b})
    restored = links_json(new)["mvc"]
    assert restored["ifindex"] == taken
    assert restored["link_index"] == links_json()[b]["ifindex"]
    assert links_json()[a]["ifindex"] == taken  # the host link is untouched


def test_rpc_config_file_wins_over_the_request_as_in_criu(
    net: Net, procs: Procs, images: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """rpc.Criu with a mapping and a ``config_file`` that names another parent for the same link:
    the link comes back on the file's parent, as CRIU would pick, and one line names both."""
    a, b, c = net.veth("pa"), net.veth("pb"), net.veth("pc")
    pid = procs.tree()
    net.macvlan_into(pid, "mv0", a, "mode", "bridge")
    dump(Criu(CRIU), pid, images)
    conf = tmp_path / "engine.conf"
    conf.write_text(f"external macvlan[mv0]:{c}\n")
    new = restore(Criu(CRIU), images, procs, {"mv0": b}, config_file=str(conf))
    assert links_json(new)["mv0"]["link_index"] == links_json()[c]["ifindex"]
    assert [r.getMessage() for r in caplog.records if "overrides" in r.getMessage()] == [
        f"macvlan[mv0]:{c} from {conf} overrides macvlan[mv0]:{b} from the request (CRIU uses the last source)"
    ]
