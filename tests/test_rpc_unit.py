"""The NOTIFY loop against a fake CRIU on a socketpair: no root, no criu."""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from criu_macvlan import macvlan_pb2 as pb
from criu_macvlan import render
from criu_macvlan.context import ActionContext, Mode
from criu_macvlan.errors import CriuError, CriuMacvlanError, HookError, NetlinkError, UsageError
from criu_macvlan.hookspecs import hookimpl
from criu_macvlan.images import Sidecar
from criu_macvlan.manager import plugin_manager
from criu_macvlan.request import CLONE_NEWNET, set_opts
from criu_macvlan.rpc import Criu, Notify

rpc = pytest.importorskip("pycriu.rpc_pb2")


class Recorder:
    def __init__(self, fail: str | None = None) -> None:
        self.seen: list[ActionContext] = []
        self.fail = fail

    def _rec(self, ctx: ActionContext) -> None:
        self.seen.append(ctx)
        if ctx.action == self.fail:
            raise NetlinkError("parent 'x' is down")



def _impl(hook: str) -> Any:
    def method(self: Recorder, ctx: ActionContext) -> None:
        self._rec(ctx)

    return hookimpl(method, specname=hook)


for _hook in ("criu_pre_dump", "criu_network_lock", "criu_network_unlock", "criu_post_dump", "criu_pre_restore",
              "criu_setup_namespaces", "criu_post_restore", "criu_post_resume"):
    setattr(Recorder, _hook, _impl(_hook))


class FakeCriu(threading.Thread):
    """Reads the request, sends ``script`` NOTIFYs, records the answers, sends ``final``."""

    def __init__(self, sk: socket.socket, scripts: list[tuple[str, int | None]], final: Any) -> None:
        super().__init__(daemon=True)
        self.sk, self.scripts, self.final = sk, scripts, final
        self.req: Any = None
        self.answers: list[bool] = []
        self.got_request = threading.Event()

    def run(self) -> None:
        req = rpc.criu_req()
        req.ParseFromString(self.sk.recv(65536))
        self.req = req
        self.got_request.set()
        for script, pid in self.scripts:
            resp = rpc.criu_resp(type=rpc.NOTIFY, success=True)
            resp.notify.script = script
            if pid is not None:
                resp.notify.pid = pid
            self.sk.send(resp.SerializeToString())
            ans = rpc.criu_req()
            ans.ParseFromString(self.sk.recv(65536))
            assert ans.type == rpc.NOTIFY
            self.answers.append(ans.notify_success)
        self.sk.send(self.final.SerializeToString())
        self.sk.close()


class FakeComm:
    def __init__(self, sk: socket.socket) -> None:
        self.sk = sk

    def disconnect(self) -> None:
        self.sk.close()


def run_fake(monkeypatch: pytest.MonkeyPatch, criu: Criu, scripts: list[tuple[str, int | None]],
             final: Any) -> FakeCriu:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fake = FakeCriu(theirs, scripts, final)
    fake.start()
    monkeypatch.setattr(criu, "_connect", lambda: (FakeComm(ours), ours))
    return fake


def hooks(rec: Recorder) -> Any:
    h = plugin_manager(disable=["macvlan"], entry_points=False)
    h.pm.register(rec, name="rec")
    return h


class Calls(Notify):
    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[tuple[str, int | None]] = []
        self.fail = fail

    def pre_dump(self) -> None:
        self._rec("pre_dump")

    def setup_namespaces(self, pid: int) -> None:
        self._rec("setup_namespaces", pid)

    def post_restore(self, pid: int) -> None:
        self._rec("post_restore", pid)

    def _rec(self, name: str, pid: int | None = None) -> None:
        self.calls.append((name, pid))
        if name == self.fail:
            raise ValueError("nope")


def test_dump_loop_dispatches_and_keeps_macvlan_externals_back(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    rec, calls = Recorder(), Calls()
    criu = Criu(hooks=hooks(rec), notify=calls)
    final = rpc.criu_resp(type=rpc.DUMP, success=True)
    fake = run_fake(monkeypatch, criu, [("pre-dump", None), ("network-lock", None), ("post-dump", None),
                                        ("some-future-action", None)], final)
    criu.dump(42, str(tmp_path), external=["macvlan[eth0]:br0", "net[4026531840]:host"], empty_ns_net=True,
              tcp_established=True, log_file="d.log", manage_cgroups_mode="soft")
    fake.join(5)
    assert fake.answers == [True, True, True, True]
    assert [c.action for c in rec.seen] == ["pre-dump", "network-lock", "post-dump"]
    assert all(c.pid == 42 and c.mode is Mode.RPC and c.empty_ns is True for c in rec.seen)
    assert rec.seen[0].mappings == {"eth0": "br0"}
    assert rec.seen[0].externals == ["macvlan[eth0]:br0", "net[4026531840]:host"]
    assert rec.seen[0].state is rec.seen[2].state  # one session
    opts = fake.req.opts
    assert fake.req.type == rpc.DUMP
    assert list(opts.external) == ["net[4026531840]:host"]  # macvlan[...] kept back
    assert opts.notify_scripts and opts.pid == 42 and opts.tcp_established
    assert opts.empty_ns == CLONE_NEWNET and opts.log_file == "d.log"
    assert opts.manage_cgroups_mode == rpc.SOFT
    assert opts.images_dir_fd >= 0
    assert calls.calls == [("pre_dump", None)]


def test_restore_pid_is_remembered_and_returned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rec, calls = Recorder(), Calls()
    criu = Criu(hooks=hooks(rec), notify=calls)
    final = rpc.criu_resp(type=rpc.RESTORE, success=True)
    final.restore.pid = 777
    fake = run_fake(monkeypatch, criu, [("pre-restore", None), ("setup-namespaces", 777),
                                        ("post-restore", 777), ("post-resume", None)], final)
    assert criu.restore(str(tmp_path), {"eth0": "br0"}) == 777
    fake.join(5)
    assert [(c.action, c.pid) for c in rec.seen] == [
        ("pre-restore", None), ("setup-namespaces", 777), ("post-restore", 777), ("post-resume", 777)]
    assert rec.seen[1].empty_ns is False and rec.seen[1].mappings == {"eth0": "br0"}
    assert calls.calls == [("setup_namespaces", 777), ("post_restore", 777)]
    assert not fake.req.opts.external


def test_hook_failure_answers_false_and_raises_with_log_tail(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    (tmp_path / "r.log").write_text("".join(f"line {i}\n" for i in range(100)) + "Error (x.c:1): boom\n")
    rec, calls = Recorder(fail="setup-namespaces"), Calls()
    criu = Criu(hooks=hooks(rec), notify=calls)
    final = rpc.criu_resp(type=rpc.RESTORE, success=False, cr_errno=5)
    fake = run_fake(monkeypatch, criu, [("pre-restore", None), ("setup-namespaces", 9), ("network-unlock", None)],
                    final)
    with pytest.raises(HookError) as err:
        criu.restore(str(tmp_path), {}, log_file="r.log")
    fake.join(5)
    assert fake.answers == [True, False, True]  # later actions are still served
    assert str(err.value) == "setup-namespaces: parent 'x' is down"
    assert err.value.exit_code == NetlinkError.exit_code
    assert err.value.log_tail.endswith("Error (x.c:1): boom") and "line 99" in err.value.log_tail
    assert "line 50" not in err.value.log_tail
    assert calls.calls == []  # the callback does not run after a plugin failed


def test_callback_failure_answers_false(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    criu = Criu(hooks=hooks(Recorder()), notify=Calls(fail="pre_dump"))
    fake = run_fake(monkeypatch, criu, [("pre-dump", None)], rpc.criu_resp(type=rpc.DUMP, success=False))
    with pytest.raises(HookError, match=r"^pre-dump: callback failed: ValueError: nope$"):
        criu.dump(1, str(tmp_path))
    fake.join(5)
    assert fake.answers == [False]


def test_criu_failure_and_closed_connection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    criu = Criu(hooks=hooks(Recorder()))
    final = rpc.criu_resp(type=rpc.DUMP, success=False, cr_errmsg="No process with such pid")
    fake = run_fake(monkeypatch, criu, [], final)
    with pytest.raises(CriuError, match="criu dump failed: No process with such pid"):
        criu.dump(1, str(tmp_path))
    fake.join(5)

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.close()
    monkeypatch.setattr(criu, "_connect", lambda: (FakeComm(ours), ours))
    with pytest.raises(CriuError):
        criu.dump(1, str(tmp_path))


def test_set_opts() -> None:
    opts = rpc.criu_opts(images_dir_fd=-1)
    set_opts(opts, {"external": "a", "skip_mnt": ["/x", "/y"], "network_lock": "nftables",
                    "ps": {"port": 1234}, "join_ns": [{"ns": "net", "ns_file": "/run/netns/x"}], "root": None})
    assert list(opts.external) == ["a"] and list(opts.skip_mnt) == ["/x", "/y"]
    assert opts.network_lock == rpc.NFTABLES and opts.ps.port == 1234 and opts.join_ns[0].ns == "net"
    assert not opts.HasField("root")
    with pytest.raises(UsageError, match="unknown CRIU option 'no_such'"):
        set_opts(opts, {"no_such": 1})
    with pytest.raises(UsageError, match="bad value"):
        set_opts(opts, {"log_level": "loud"})


def test_bad_images_dir_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot open directory"):
        Criu().dump(1, str(tmp_path / "missing"))


def test_json_round_trip_of_every_field() -> None:
    link = pb.macvlan_link(name="eth0", ifindex=5, mode=16, flags=3, address=bytes.fromhex("0242ac110002"), mtu=1400,
                           link_flags=0x1043, txqlen=500, bc_queue_len=1000, bc_cutoff=-1,
                           source_macs=[bytes.fromhex("020000000001")], netns_id=3)
    link.parent.MergeFrom(pb.macvlan_parent(ifindex=7, link_netnsid=0, name="enp1s0",
                                            address=bytes.fromhex("525400000001"), mtu=9000))
    link.addrs.add(family=2, address=bytes([10, 0, 0, 2]), prefixlen=24, scope=0, flags=0x80,
                   broadcast=bytes([10, 0, 0, 255]), label="eth0", valid_lft=100, preferred_lft=50,
                   peer=bytes([10, 0, 0, 1]))
    link.addrs.add(family=10, address=bytes.fromhex("20010db8" + "0" * 23 + "2"), prefixlen=64)
    link.routes.add(family=2, dst_len=0, gateway=bytes([10, 0, 0, 1]), priority=5, table=254, scope=0,
                    protocol=3, prefsrc=bytes([10, 0, 0, 2]), type=1)
    head = pb.macvlan_head(version=1, n_links=1, empty_ns=True, hostname="h", netns_inode=2**40)
    sidecar = Sidecar(head, [link])
    text = render.to_json(sidecar)
    assert '"02:42:ac:11:00:02"' in text and '"2001:db8::2"' in text and '"10.0.0.255"' in text
    back = render.from_json(text)
    assert back.head == head and back.links == [link]
    for bad in ("[]", "{", '{"head": {}, "links": [{"address": "zz"}]}'):
        with pytest.raises(CriuMacvlanError):
            render.from_json(bad)


def test_api_is_lazy() -> None:
    import subprocess
    import sys

    code = "import criu_macvlan, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('pycriu', 'pyroute2', 'google', 'pluggy') or m.startswith('criu_macvlan.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert callable(importlib.import_module("criu_macvlan").restore)


def test_rpc_messages_load_without_the_image_schemas() -> None:
    """pycriu's ``__init__`` loads every image schema: the driver skips it, a later ``import pycriu`` still works."""
    code = (
        "import sys\n"
        "from criu_macvlan import request\n"
        "pb = request.rpc_pb2(); conn = request.pycriu('criu')\n"
        "assert 'pycriu.images' not in sys.modules and 'pycriu' not in sys.modules, sorted(sys.modules)\n"
        "assert pb.criu_opts(images_dir_fd=3).images_dir_fd == 3 and conn._criu_comm_bin\n"
        "import pycriu, pycriu.images\n"
        "assert pycriu.rpc is pb and pycriu.criu().opts is not None\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


class Early:
    """Implements criu_rpc_request: records when it ran and what it saw."""

    def __init__(self, fake: list[FakeCriu], fail: bool = False) -> None:
        self.fake, self.fail = fake, fail
        self.seen: list[tuple[str, int | None, bool, int]] = []
        self.state: dict[str, Any] | None = None

    @hookimpl
    def criu_rpc_request(self, ctx: ActionContext) -> None:
        fake = self.fake[0]
        sent = fake.got_request.wait(5)  # CRIU has the request ...
        self.seen.append((ctx.action, ctx.pid, sent, len(fake.answers)))  # ... and no answer yet
        ctx.state["early"] = True
        self.state = ctx.state
        if self.fail:
            raise RuntimeError("broken early hook")


@pytest.mark.parametrize("kind", ["dump", "restore"])
def test_rpc_request_hook_runs_after_the_request_before_any_notify(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path, kind: str) -> None:
    fakes: list[FakeCriu] = []
    rec, early = Recorder(), Early(fakes)
    h = hooks(rec)
    h.pm.register(early, name="early")
    criu = Criu(hooks=h)
    final = rpc.criu_resp(type=rpc.DUMP if kind == "dump" else rpc.RESTORE, success=True)
    final.restore.pid = 5
    fakes.append(run_fake(monkeypatch, criu, [("pre-dump" if kind == "dump" else "pre-restore", None)], final))
    if kind == "dump":
        criu.dump(42, str(tmp_path))
    else:
        criu.restore(str(tmp_path), {})
    fakes[0].join(5)
    assert early.seen == [(kind, 42 if kind == "dump" else None, True, 0)]
    assert rec.seen[0].state is early.state and rec.seen[0].state["early"]


def test_rpc_request_hook_failure_is_logged_and_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    fakes: list[FakeCriu] = []
    h = hooks(Recorder())
    h.pm.register(Early(fakes, fail=True), name="early")
    criu = Criu(hooks=h)
    fakes.append(run_fake(monkeypatch, criu, [("pre-dump", None)], rpc.criu_resp(type=rpc.DUMP, success=True)))
    criu.dump(1, str(tmp_path))
    fakes[0].join(5)
    assert fakes[0].answers == [True]
    assert "criu_rpc_request hook failed (ignored): RuntimeError: broken early hook" in caplog.text


def test_an_rpc_config_file_wins_over_the_request_as_in_criu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """CRIU reads an RPC ``config_file`` after the request's options, and looks up the last external
    added first: the file's parent is the one used, and one line names both sources."""
    from criu_macvlan.request import Request

    conf = tmp_path / "engine.conf"
    conf.write_text("external macvlan[mv0]:eth7\nexternal macvlan[mv1]:eth1\n")
    request = Request(str(tmp_path), {"config_file": str(conf)}, {"mv0": "eth0", "mv2": "eth2"})
    try:
        assert request.mappings == {"mv0": "eth7", "mv1": "eth1", "mv2": "eth2"}
    finally:
        request.close()
    [line] = [r.getMessage() for r in caplog.records]
    assert f"macvlan[mv0]:eth7 from {conf} overrides macvlan[mv0]:eth0 from the request" in line
