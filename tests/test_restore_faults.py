"""A restore that fails at any link leaves nothing behind: mocked netlink, then real links."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers import Net, Procs, ip, link_names, unique

from criu_macvlan import macvlan_pb2 as pb
from criu_macvlan import netlink, plugin
from criu_macvlan.context import ActionContext, ImagesDir, Mode
from criu_macvlan.errors import NetlinkError
from criu_macvlan.macvlan import restore

N = 4


def make_link(i: int) -> pb.macvlan_link:
    return pb.macvlan_link(
        name=f"mv{i}", ifindex=100 + i, mode=4, address=bytes([2, 0, 0, 0, 0x10, i]), mtu=1500, link_flags=1
    )


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ActionContext]:
    images = ImagesDir.open(str(tmp_path))
    try:
        yield ActionContext(action="setup-namespaces", mode=Mode.RPC, images=images, log=logging.getLogger("t"))
    finally:
        images.close()


# ------------------------------------------------------------- mocked netlink


class FakeRtnl:
    """Stands in for netlink.Rtnl; records calls; the create request at position ``fail_at`` fails.

    Like the kernel with a batch of requests, every other request still succeeds.
    """

    calls: ClassVar[list[tuple[str, Any]]] = []
    fail_at: int | None = None
    fail_delete: bool = False
    fail_l3: bool | str = False
    before_create: Callable[[int], None] | None = None

    def __init__(self, netns_fd: int | None = None) -> None:
        self.where = "host" if netns_fd is None else "inside"

    def __enter__(self) -> FakeRtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        FakeRtnl.calls.append(("close", self.where))

    def links(self) -> list[Any]:
        return []

    def create_macvlans(
        self, items: list[tuple[pb.macvlan_link, int]], target_fd: int, keep_going: Callable[[], bool] | None = None
    ) -> list[tuple[pb.macvlan_link, NetlinkError | None]]:
        results: list[tuple[pb.macvlan_link, NetlinkError | None]] = []
        for link, _ in items:
            if results and keep_going is not None and not keep_going():  # batches of one link
                break
            position = sum(1 for c in FakeRtnl.calls if c[0] == "create")
            if FakeRtnl.before_create is not None:
                FakeRtnl.before_create(position)
            FakeRtnl.calls.append(("create", link.name))
            failed = position == FakeRtnl.fail_at
            results.append((link, NetlinkError("Invalid argument (errno 22)") if failed else None))
        return results

    def delete_link(self, index: int) -> bool:
        FakeRtnl.calls.append(("delete", index))
        if FakeRtnl.fail_delete:
            raise NetlinkError(f"cannot delete link {index}: Device or resource busy (errno 16)")
        return True

    def set_up(self, index: int) -> None:
        if FakeRtnl.fail_l3 == "interrupt":
            raise KeyboardInterrupt
        if FakeRtnl.fail_l3:
            raise NetlinkError(f"cannot set link {index} up: Network is down (errno 100)")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeRtnl]:
    FakeRtnl.calls = []
    FakeRtnl.fail_at = None
    FakeRtnl.fail_delete = False
    FakeRtnl.fail_l3 = False
    FakeRtnl.before_create = None
    monkeypatch.setattr(netlink, "Rtnl", FakeRtnl)

    def resolve(host: object, plan: list[restore.Planned]) -> None:
        for i, item in enumerate(plan):
            item.parent_index = 50 + i

    monkeypatch.setattr(restore, "_resolve_parents", resolve)
    return FakeRtnl


def plan_of(n: int) -> list[restore.Planned]:
    return [restore.Planned(make_link(i), f"p{i}") for i in range(n)]


@pytest.mark.parametrize("k", range(N))
def test_injected_failure_at_position_k_removes_every_link_made_in_reverse(
    fake: type[FakeRtnl], ctx: ActionContext, k: int
) -> None:
    fake.fail_at = k
    with pytest.raises(NetlinkError) as info:
        restore.restore_links(plan_of(N), target=-1, with_l3=False, ctx=ctx)
    assert str(info.value) == f"cannot create macvlan 'mv{k}' on 'p{k}': Invalid argument (errno 22)"
    creates = [c[1] for c in fake.calls if c[0] == "create"]
    deletes = [c[1] for c in fake.calls if c[0] == "delete"]
    assert creates == [f"mv{i}" for i in range(N)]  # one batch: the kernel makes the others
    assert deletes == [100 + i for i in reversed(range(N)) if i != k]
    assert fake.calls[-2:] == [("close", "inside"), ("close", "host")]  # sockets closed after cleanup


def test_no_failure_deletes_nothing(fake: type[FakeRtnl], ctx: ActionContext) -> None:
    restore.restore_links(plan_of(N), target=-1, with_l3=False, ctx=ctx)
    assert [c[1] for c in fake.calls if c[0] == "create"] == [f"mv{i}" for i in range(N)]
    assert not [c for c in fake.calls if c[0] == "delete"]


def test_failure_after_all_links_removes_all(fake: type[FakeRtnl], ctx: ActionContext) -> None:
    fake.fail_l3 = True
    with pytest.raises(NetlinkError, match="cannot set link 100 up"):
        restore.restore_links(plan_of(N), target=-1, with_l3=True, ctx=ctx)
    assert [c[1] for c in fake.calls if c[0] == "delete"] == [103, 102, 101, 100]


def test_failing_cleanup_reports_the_first_error(
    fake: type[FakeRtnl], ctx: ActionContext, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail_at = 2
    fake.fail_delete = True
    with pytest.raises(NetlinkError, match="cannot create macvlan 'mv2'"):
        restore.restore_links(plan_of(N), target=-1, with_l3=False, ctx=ctx)
    assert [c[1] for c in fake.calls if c[0] == "delete"] == [103, 101, 100]  # still tries every one
    assert caplog.text.count("could not remove") == 3


def test_interrupt_after_the_links_still_cleans_up(fake: type[FakeRtnl], ctx: ActionContext) -> None:
    """KeyboardInterrupt/SystemExit (e.g. the RPC driver shutting down) also rolls back."""
    fake.fail_l3 = "interrupt"
    with pytest.raises(KeyboardInterrupt):
        restore.restore_links(plan_of(N), target=-1, with_l3=True, ctx=ctx)
    assert [c[1] for c in fake.calls if c[0] == "delete"] == [103, 102, 101, 100]


def test_criu_gone_between_batches_stops_and_removes_the_links(fake: type[FakeRtnl], ctx: ActionContext) -> None:
    """CRIU (here a stand-in process) exits after the second link: no third, both removed."""
    from criu_macvlan.watch import CriuGone

    criu = subprocess.Popen(["sleep", "100000"])
    try:

        def kill_criu(position: int) -> None:
            if position == 2:
                criu.kill()
                criu.wait(timeout=60)

        fake.before_create = kill_criu
        ctx.criu_pid = criu.pid
        with pytest.raises(CriuGone) as info:
            restore.restore_links(plan_of(N), target=-1, with_l3=False, ctx=ctx)
    finally:
        criu.kill()
        criu.wait(timeout=60)
    expected = f"criu (pid {criu.pid}) exited while the macvlans were being made (3 of {N}): removed them"
    assert str(info.value) == expected
    assert [c[1] for c in fake.calls if c[0] == "create"] == ["mv0", "mv1", "mv2"]
    assert [c[1] for c in fake.calls if c[0] == "delete"] == [102, 101, 100]


# --------------------------------------------------------------- real links


def passthru_blocked_parent(net: Net) -> str:
    """A parent on which no further macvlan can be made (it has a passthru macvlan): EINVAL."""
    parent = net.veth("pf")
    blocker = unique("pt")
    ip("link", "add", blocker, "link", parent, "type", "macvlan", "mode", "passthru")
    net.created.append(blocker)
    return parent


@pytest.mark.integration
@pytest.mark.parametrize("batch", ["one batch", "batches of two"])
@pytest.mark.parametrize("k", range(N))
def test_real_failure_at_position_k_leaves_target_netns_empty(
    net: Net, procs: Procs, ctx: ActionContext, k: int, batch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if batch == "batches of two":
        monkeypatch.setattr(netlink.rtnl, "BATCH_BYTES", 256)
    parents = [passthru_blocked_parent(net) if i == k else net.veth("pr") for i in range(N)]
    pid = procs.tree()
    plan = [restore.Planned(make_link(i), parents[i]) for i in range(N)]
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        with pytest.raises(NetlinkError) as info:
            restore.restore_links(plan, target, with_l3=False, ctx=ctx)
    finally:
        os.close(target)
    assert str(info.value).startswith(f"cannot create macvlan 'mv{k}' on '{parents[k]}': Invalid argument")
    assert link_names(pid) == {"lo"}
    assert not link_names() & {f"mv{i}" for i in range(N)}  # nothing landed in the host netns either


@contextlib.contextmanager
def two_planned(net: Net, procs: Procs) -> Iterator[tuple[int, list[restore.Planned], int]]:
    """A new tree's pid, two links planned on parents of their own, and an fd of the tree's netns."""
    parents = [net.veth("pr") for _ in range(2)]
    pid = procs.tree()
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        yield pid, [restore.Planned(make_link(i), parents[i]) for i in range(2)], target
    finally:
        os.close(target)


@pytest.mark.integration
def test_real_success_then_repeat_is_idempotent(net: Net, procs: Procs, ctx: ActionContext) -> None:
    with two_planned(net, procs) as (pid, plan, target):
        restore.restore_links(plan, target, with_l3=False, ctx=ctx)
        restore.restore_links(plan, target, with_l3=False, ctx=ctx)  # repeated action: no change, no error
    assert link_names(pid) == {"lo", "mv0", "mv1"}


@pytest.mark.integration
@pytest.mark.parametrize("taken", ["name", "ifindex"])
def test_real_link_in_the_way_is_named_and_nothing_is_left(net: Net, procs: Procs, ctx: ActionContext,
                                                             taken: str) -> None:
    """The kernel refuses the one link (EEXIST, EBUSY); the one made before it is removed again."""
    other = ["name", "mv1"] if taken == "name" else ["name", "other0", "index", "101"]
    with two_planned(net, procs) as (pid, plan, target):
        ip("link", "add", *other, "type", "veth", "peer", "name", "peer0", pid=pid)
        with pytest.raises(NetlinkError) as info:
            restore.restore_links(plan, target, with_l3=False, ctx=ctx)
    clash = "mv1" if taken == "name" else "other0"
    assert str(info.value) == (f"cannot create macvlan 'mv1' (ifindex 101) on '{plan[1].parent}': "
                               f"the target netns already has '{clash}'")
    assert link_names(pid) == {"lo", other[1], "peer0"}


@pytest.mark.integration
def test_real_repeat_after_a_partial_run_makes_the_rest(net: Net, procs: Procs, ctx: ActionContext) -> None:
    """One link there from an earlier run of the action: it stays, the other is made."""
    with two_planned(net, procs) as (pid, plan, target):
        restore.restore_links(plan[:1], target, with_l3=False, ctx=ctx)
        made = restore.restore_links(plan, target, with_l3=False, ctx=ctx)
    assert [link.name for link in made] == ["mv1"]
    assert link_names(pid) == {"lo", "mv0", "mv1"}


def test_unexpected_error_while_preparing_is_reported_once(ctx: ActionContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in criu_rpc_request's early work surfaces in the action that needs it, not also as a warning."""

    def broken(ctx: ActionContext) -> None:
        raise IsADirectoryError(21, "Is a directory")

    monkeypatch.setattr(restore, "prepare_restore", broken)
    macvlan = plugin.MacvlanPlugin()
    ctx.action = "restore"
    macvlan.criu_rpc_request(ctx)  # kept for later
    ctx.action = "setup-namespaces"
    with pytest.raises(IsADirectoryError):
        macvlan.criu_setup_namespaces(ctx)
