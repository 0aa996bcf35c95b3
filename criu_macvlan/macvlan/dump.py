"""Dump: read the macvlans of the tree's netns, stage them, commit ``macvlan.img`` and convert CRIU's netdev images.

``pre-dump`` checks and opens the tree's netns, then reads every macvlan in it
(plus its addresses and routes) and stages a complete sidecar as a hidden file in
the images dir, after CRIU has its answer (:mod:`.staging`); ``post-dump`` commits
it as ``macvlan.img`` and switches the links' entries in CRIU's
``netdev-<id>.img`` from MACVLAN to EXTLINK, so that CRIU leaves the creation of
those links to us; ``network-unlock`` drops a stage that a failed dump never
committed. Over RPC the read starts in ``criu_rpc_request`` (the tree's netns is
checked there, before CRIU's first notification) and goes on in a
:class:`Reader` thread while CRIU dumps; ``post-dump`` takes what it found.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Literal

from .. import images, netdev
from .. import macvlan_pb2 as pb
from .. import netns as nsutil
from ..context import ActionContext
from ..errors import CriuMacvlanError
from . import staging
from .session import require_pid, session

NETNS_EXTERNAL_PREFIX = "net["

Found = tuple[list[pb.macvlan_link], int]  # the links and the inode of their netns


def start_reading(ctx: ActionContext) -> None:
    """``criu_rpc_request`` of a dump: check the tree's netns and start reading its macvlans."""
    s = session(ctx)
    try:
        opened = _open_tree(ctx, require_pid(ctx))
        if opened is not None:
            s.reader = Reader(*opened)
            s.reader.start()
    except Exception as exc:  # raised by pre-dump: one report, not two
        s.error = exc


def pre_dump(ctx: ActionContext) -> None:
    dir_fd = ctx.images.fd
    if staging.reading(dir_fd):
        ctx.log.debug("pre-dump delivered again: the first delivery's read goes on")
        return
    images.remove_temp_files(dir_fd)
    staging.drop(dir_fd)
    s = session(ctx)
    s.take_error()
    if s.reader is not None:  # it reads on while CRIU dumps; post-dump stages and commits
        return
    pid = require_pid(ctx)
    opened = _open_tree(ctx, pid)
    if opened is not None:
        _stage_after_the_answer(ctx, pid, opened)


Origin = Literal["read", "staged", "committed"]  # of the sidecar post-dump saves (sidecar_to_commit)


def post_dump(ctx: ActionContext) -> None:
    # The sidecar appears last, by an atomic rename: a post-dump that fails
    # earlier leaves no sidecar that looks valid.
    dir_fd = ctx.images.fd
    source = sidecar_to_commit(ctx)
    if source is None:
        return  # no macvlan was staged: nothing to do
    sidecar, origin = source
    netdevs = netdev.netdev_images(dir_fd)
    if origin != "committed" and not netdevs:
        sidecar.head.empty_ns = True  # CRIU wrote no netdev image: --empty-ns net (the stage says otherwise)
    ifindexes = {link.ifindex for link in sidecar.links}
    for name in netdevs:
        changed = netdev.convert_netdev(dir_fd, name, ifindexes)
        if changed:
            ctx.log.info("%s: %d macvlan entr%s now EXTLINK", name, changed, "y" if changed == 1 else "ies")
    if origin != "committed":
        if origin == "staged" and netdevs:  # the stage is this very sidecar: renamed, not written again
            images.rename(dir_fd, images.STAGED, images.SIDECAR)
        else:
            images.write_atomic(dir_fd, images.SIDECAR, images.encode(sidecar.head, sidecar.links))
        staging.drop(dir_fd)
    ctx.log.info("saved %d macvlan link(s) in %s", len(sidecar.links), images.SIDECAR)


def sidecar_to_commit(ctx: ActionContext) -> tuple[images.Sidecar, Origin] | None:
    """What ``post-dump`` saves, and where it comes from; ``None``: the dump has no macvlan.

    From the first of: the links the RPC :class:`Reader` found (``"read"``), the
    stage ``pre-dump`` wrote (``"staged"``), or (a repeated ``post-dump``, whose
    netdev part must still be done) the ``macvlan.img`` committed before (``"committed"``).
    """
    dir_fd = ctx.images.fd
    s = session(ctx)
    reader, s.reader = s.reader, None
    found = reader.result() if reader is not None else None
    if found is not None:
        return images.Sidecar(_head(ctx, found[1]), found[0]), "read"
    staging.wait(dir_fd)
    staged = images.read_file(dir_fd, images.STAGED)
    if staged is not None:
        return images.decode(staged, images.STAGED), "staged"
    loaded = images.load(dir_fd)
    return (loaded, "committed") if loaded is not None else None


def network_unlock(ctx: ActionContext) -> None:
    s = session(ctx)
    reader, s.reader = s.reader, None
    if reader is not None:  # a dump that failed before post-dump: let the reader finish
        reader.join()
    with contextlib.suppress(CriuMacvlanError):  # what it failed with no longer matters
        staging.wait(ctx.images.fd)
    if staging.drop(ctx.images.fd):
        ctx.log.info("dump did not complete: dropped the staged macvlan state")
    images.remove_temp_files(ctx.images.fd)


def _is_external_netns(ctx: ActionContext, inode: int) -> bool:
    """True if CRIU was told the netns is external (``--external net[INODE]:KEY``)."""
    prefix = f"{NETNS_EXTERNAL_PREFIX}{inode}]"
    return any(key.startswith(prefix) for key in ctx.externals)


def _open_tree(ctx: ActionContext, pid: int) -> tuple[int, int, int] | None:
    """``(netns fd, our netns fd, inode)`` of tree ``pid`` if it has a netns to save, else ``None``.

    Refuses macvlans in a second netns of the tree. The caller closes both fds.
    """
    target = nsutil.open_of_pid(pid)
    own = nsutil.open_own()
    opened = None
    try:
        _refuse_macvlans_in_other_netns(ctx, pid, target, own)
        if nsutil.same(target, own):
            ctx.log.debug("tree %d shares our network namespace: no macvlan of its own", pid)
        elif _is_external_netns(ctx, nsutil.inode(target)):
            ctx.log.debug("tree %d's network namespace is external: not ours to save", pid)
        else:
            opened = target, own, nsutil.inode(target)
        return opened
    finally:
        if opened is None:
            os.close(target)
            os.close(own)


def _read_links(target: int, own: int, inode: int) -> Found | None:
    """The macvlans of netns ``target`` (closes both fds); ``None`` if it has none."""
    try:
        from ..netlink import read_macvlans

        links = read_macvlans(target, own)
    finally:
        os.close(target)
        os.close(own)
    if not links:
        return None
    for link in links:
        if not link.parent.HasField("link_netnsid"):
            raise CriuMacvlanError(
                f"macvlan {link.name!r} sits on a parent inside the dumped network namespace "
                f"(ifindex {link.parent.ifindex}); only parents outside it can be remapped"
            )
    return links, inode


def _stage_after_the_answer(ctx: ActionContext, pid: int, opened: tuple[int, int, int]) -> None:
    """Leave the read of the links of the netns ``opened`` (:func:`_open_tree`) and their stage for
    after CRIU has ``pre-dump``'s answer (:mod:`.staging`); the stage exists, empty, from now on."""
    try:
        pending = staging.begin(ctx.images.fd)
    except BaseException:
        os.close(opened[0])
        os.close(opened[1])
        raise
    head = _head(ctx, opened[2])

    def read() -> bytes | None:
        found = _read_links(*opened)
        if found is None:
            ctx.log.debug("no macvlan in the network namespace of tree %d", pid)
            return None
        ctx.log.info("staged %d macvlan link(s): %s", len(found[0]), ", ".join(lk.name for lk in found[0]))
        return images.encode(head, found[0])

    ctx.later.append(lambda: pending.run(read))


class Reader(threading.Thread):
    """RPC mode: reads the macvlans in the background (once :meth:`start`\\ ed); ``post-dump`` takes them.

    It starts before CRIU's first notification, as a ``pre-dump`` read would, and
    may go on while CRIU freezes and dumps the tree (which then cannot change its
    links): the dump never waits for it before ``post-dump``. It owns both fds.
    """

    def __init__(self, target: int, own: int, inode: int) -> None:
        super().__init__(name="criu-macvlan-reader", daemon=True)
        self._args = (target, own, inode)
        self._found: Found | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._found = _read_links(*self._args)
            if self._found is not None:
                netdev.netdev_entry_class()  # imported now, not in post-dump (the tree is frozen then)
        except BaseException as exc:  # handed to post-dump
            self._error = exc

    def result(self) -> Found | None:
        self.join()
        if self._error is not None:
            raise self._error
        return self._found


def _head(ctx: ActionContext, inode: int) -> pb.macvlan_head:
    head = pb.macvlan_head(hostname=os.uname().nodename, netns_inode=inode)
    if ctx.empty_ns is not None:
        head.empty_ns = ctx.empty_ns
    return head


def _refuse_macvlans_in_other_netns(ctx: ActionContext, pid: int, root_fd: int, own_fd: int) -> None:
    """Fail the dump if a netns of the tree other than its root task's holds a macvlan.

    Only the root task's netns is saved and recreated (see docs/several-netns.md);
    a macvlan elsewhere in the tree would be restored by CRIU as a native macvlan
    on a parent that may not exist, or lost in empty-netns mode: refused loudly.
    """
    root_key, own_key = nsutil.key(root_fd), nsutil.key(own_fd)
    others = {k: p for k, p in nsutil.netns_of_tree(pid).items() if k not in (root_key, own_key)}
    if not others:
        return
    from ..netlink import read_macvlans

    for (_, ino), member in sorted(others.items(), key=lambda kv: kv[1]):
        if _is_external_netns(ctx, ino):
            continue
        try:
            fd = nsutil.open_of_pid(member)
        except CriuMacvlanError:
            continue  # the process exited during the walk
        try:
            links = read_macvlans(fd, own_fd, with_l3=False)
        finally:
            os.close(fd)
        if links:
            names = ", ".join(link.name for link in links)
            raise CriuMacvlanError(
                f"process {member} of tree {pid} is in a second network namespace (net:[{ino}]) "
                f"with macvlan {names}: criu-macvlan saves the macvlans of the root task's "
                "network namespace only; move them there or dump that subtree separately"
            )
