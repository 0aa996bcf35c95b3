"""The built-in macvlan plugin.

Dump:
    ``pre-dump`` reads every macvlan of the tree's netns (plus its addresses and
    routes) and stages a complete sidecar as a hidden file in the images dir;
    ``post-dump`` commits it as ``macvlan.img`` and switches the links' entries in
    CRIU's ``netdev-<id>.img`` from MACVLAN to EXTLINK, so that CRIU leaves the
    creation of those links to us; ``network-unlock`` drops a stage that a failed
    dump never committed. Over RPC the read starts in ``criu_rpc_request`` (the
    tree's netns is checked there, before CRIU's first notification) and goes on
    in a thread while CRIU dumps; ``post-dump`` stages what it found and commits.

Restore:
    ``setup-namespaces`` recreates each link in the restored tree's new netns,
    attached to the parent its ``macvlan[IN]:OUT`` mapping names, with the same
    name, ifindex, MAC, MTU, mode, flags and the rest. In CRIU-managed mode CRIU
    then sets the links up and restores their addresses and routes; in empty-netns
    mode (``--empty-ns net``: CRIU saved no netdev image) the plugin does that too.
    Over RPC the images are read and the links planned in ``criu_rpc_request``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from . import announce, announcer, images
from . import macvlan_pb2 as pb
from . import netns as nsutil
from .context import ActionContext, Mode
from .errors import CriuMacvlanError, ImageError, NetlinkError, UsageError
from .hookspecs import hookimpl
from .mappings import format_mapping

if TYPE_CHECKING:
    from .netlink import PreparedMacvlans, Rtnl

IFF_UP = 0x1
PASSTHRU = 8
NETNS_EXTERNAL_PREFIX = "net["


def _require_pid(ctx: ActionContext) -> int:
    if ctx.pid is None or ctx.pid <= 0:
        raise CriuMacvlanError("CRIU did not say which process tree this is (no CRTOOLS_INIT_PID)")
    return ctx.pid


def _is_external_netns(ctx: ActionContext, inode: int) -> bool:
    """True if CRIU was told the netns is external (``--external net[INODE]:KEY``)."""
    prefix = f"{NETNS_EXTERNAL_PREFIX}{inode}]"
    return any(key.startswith(prefix) for key in ctx.externals)


class MacvlanPlugin:
    """Saves and recreates the macvlan links of a dumped tree's network namespace."""

    # network-unlock has work only when a failed dump left a stage behind; post-setup-namespaces
    # only in RPC mode (in action-script mode the shim wakes the announcer setup-namespaces left)
    criu_macvlan_guards: ClassVar[dict[str, str]] = {
        "network-unlock": images.STAGED,
        "post-setup-namespaces": announce.GUARD,
    }

    # ------------------------------------------------------------- dump

    @hookimpl
    def criu_rpc_request(self, ctx: ActionContext) -> None:
        # RPC mode: the slow parts of the dump and the restore run while CRIU works.
        try:
            if ctx.action == "dump":
                opened = _open_tree(ctx, _require_pid(ctx))
                if opened is not None:
                    ctx.state[_READ] = _Reader(*opened)
            elif ctx.action == "restore":
                todo = _prepare_restore(ctx)
                ctx.state[_PLAN] = todo
                if todo is not None:
                    ctx.state[_REQUESTS] = _encode_ahead(todo[0])
                    ctx.state[_FRAMES] = _image_frames([item.link for item in todo[0]])
                    schedule = ctx.state[_SCHEDULE] = _schedule(ctx)
                    if schedule is not None and schedule.rounds > 1:
                        with contextlib.suppress(OSError):  # else post-setup-namespaces forks it
                            ctx.state[_REPEATER] = announcer.Repeater(schedule)  # now, not while CRIU waits
        except Exception as exc:  # raised by the action that needs it: one report, not two
            ctx.state[_READ if ctx.action == "dump" else _PLAN] = exc

    @hookimpl
    def criu_pre_dump(self, ctx: ActionContext) -> None:
        dir_fd = ctx.images.fd
        images.remove_temp_files(dir_fd)
        images.unlink(dir_fd, images.STAGED)
        early = _prepared(ctx, _READ)
        if isinstance(early, _Reader):  # it reads on while CRIU dumps; post-dump stages and commits
            ctx.state[_READER] = early
            return
        found = _read_tree(ctx, _require_pid(ctx))
        if found is not None:
            _stage(ctx, *found)

    @hookimpl
    def criu_post_dump(self, ctx: ActionContext) -> None:
        # The sidecar appears last, by an atomic rename: a post-dump that fails
        # earlier leaves no sidecar that looks valid.
        dir_fd = ctx.images.fd
        reader = ctx.state.pop(_READER, None)
        found = reader.result() if reader is not None else None
        staged = images.read_file(dir_fd, images.STAGED) if found is None else None
        if found is not None:
            sidecar = images.Sidecar(_head(ctx, found[1]), found[0])
        elif staged is not None:
            sidecar = images.decode(staged, images.STAGED)
        else:
            loaded = images.load(dir_fd)
            if loaded is None:
                return  # no macvlan was staged: nothing to do
            sidecar = loaded  # a repeated post-dump: make sure the netdev part is done too
        committed = found is None and staged is None
        netdevs = images.netdev_images(dir_fd)
        if not committed and not netdevs:
            sidecar.head.empty_ns = True  # CRIU wrote no netdev image: --empty-ns net
        ifindexes = {link.ifindex for link in sidecar.links}
        for name in netdevs:
            changed = images.convert_netdev(dir_fd, name, ifindexes)
            if changed:
                ctx.log.info("%s: %d macvlan entr%s now EXTLINK", name, changed, "y" if changed == 1 else "ies")
        if not committed:
            images.write_atomic(dir_fd, images.SIDECAR, images.encode(sidecar.head, sidecar.links))
            images.unlink(dir_fd, images.STAGED)
        ctx.log.info("saved %d macvlan link(s) in %s", len(sidecar.links), images.SIDECAR)

    @hookimpl
    def criu_network_unlock(self, ctx: ActionContext) -> None:
        for key in (_READ, _READER):  # a dump that failed before post-dump: let the reader finish
            early = ctx.state.pop(key, None)
            if isinstance(early, _Reader):
                early.join()
        if images.unlink(ctx.images.fd, images.STAGED):
            ctx.log.info("dump did not complete: dropped the staged macvlan state")
        images.remove_temp_files(ctx.images.fd)

    # ---------------------------------------------------------- restore

    @hookimpl
    def criu_setup_namespaces(self, ctx: ActionContext) -> None:
        requests = ctx.state.pop(_REQUESTS, None)
        try:
            prepared = _prepared(ctx, _PLAN)
            todo = prepared if prepared is not None else _prepare_restore(ctx)
            if todo is None:
                return
            plan, with_l3 = todo
            pid = _require_pid(ctx)
            target = nsutil.open_of_pid(pid)
            own = nsutil.open_own()
            try:
                if nsutil.same(target, own):
                    raise CriuMacvlanError(
                        f"restored tree {pid} is in our own network namespace: the dump had macvlans "
                        "in a netns of its own, restore it into a new one"
                    )
                created = restore_links(plan, target, with_l3=with_l3, ctx=ctx, requests=requests)
                if created:
                    _arm_announce(ctx, created)
            finally:
                os.close(target)
                os.close(own)
        finally:
            if requests is not None:
                requests.close()

    @hookimpl
    def criu_post_setup_namespaces(self, ctx: ActionContext) -> None:
        # Addresses restored, the network still locked, no task runs yet: the first round now.
        armed = ctx.state.pop(_ANNOUNCE, None)
        if armed is None:
            return
        indexes, names, schedule = armed
        known = ctx.state.pop(_FRAMES, None)
        if known is not None:
            known = [link for link in known if link.name in names]  # the links this restore made
        try:
            pid = _require_pid(ctx)
            pidfd = os.pidfd_open(pid)
            try:
                links, errors, sock = announcer.first_round(pid, pidfd, indexes, known)
            finally:
                os.close(pidfd)
            announcer.close_later(sock)
            for name, error in errors.items():
                ctx.log.warning("%s", announce.warning(name, error))
            repeater = ctx.state.pop(_REPEATER, None)
            if repeater is not None:
                repeater.go(pid, links)
            else:
                announcer.repeat_detached(pid, links, schedule)
            ctx.log.info("announced %s", announce.summary(links))
        except (OSError, CriuMacvlanError) as exc:
            ctx.log.warning("%s", announce.warning("the restored links", str(exc)))


def _image_frames(links: list[pb.macvlan_link]) -> list[announce.LinkFrames] | None:
    """The frames of the links that are up, from the images alone, made before CRIU needs them;
    ``None`` when a link has IPv6 addresses: whether they are still tentative after the restore
    (no advertisement then) is known only from the restored netns."""
    if any(a.family == socket.AF_INET6 for link in links for a in link.addrs):
        return None
    result = []
    for link in links:
        if link.link_flags & IFF_UP:
            frames, what = announce.frames_for(link.address, [a.address for a in link.addrs], [])
            result.append(announce.LinkFrames(link.name, frames, what))
    return result


def _schedule(ctx: ActionContext) -> announce.Schedule | None:
    """The announce schedule of this restore (``None``: off); a bad setting is a warning."""
    try:
        return announce.configured(ctx.announce, os.environ)
    except UsageError as exc:
        ctx.log.warning("%s; announcing with the default %s", exc, announce.DEFAULT.spec())
        return announce.DEFAULT


def _arm_announce(ctx: ActionContext, created: list[pb.macvlan_link]) -> None:
    """Prepare the announcement of the links just made; never fails the restore."""
    indexes = [link.ifindex for link in created]
    schedule = ctx.state.pop(_SCHEDULE) if _SCHEDULE in ctx.state else _schedule(ctx)
    if schedule is None:
        ctx.log.debug("announce is off")
    elif ctx.mode is Mode.RPC:
        ctx.state[_ANNOUNCE] = indexes, {link.name for link in created}, schedule
    else:
        from .criuconf import criu_pid_from_env

        criu_pid = criu_pid_from_env(os.environ)
        known = _image_frames(created)
        if criu_pid is None or not announcer.arm(criu_pid, _require_pid(ctx), indexes, schedule, known):
            ctx.log.warning("%s", announce.warning("the restored links", "cannot start the announcer"))


# ctx.state keys: what criu_rpc_request prepared (a result, or the error to raise later)
_READ = "macvlan.read"
_ANNOUNCE = "macvlan.announce"
_REPEATER = "macvlan.repeater"
_SCHEDULE = "macvlan.schedule"
_FRAMES = "macvlan.frames"
_READER = "macvlan.reader"
_PLAN = "macvlan.plan"
_REQUESTS = "macvlan.requests"

Found = tuple[list[pb.macvlan_link], int]  # the links and the inode of their netns


def _prepared(ctx: ActionContext, key: str) -> Any:
    """What ``criu_rpc_request`` left under ``key`` (once); raises the error it kept."""
    value = ctx.state.pop(key, None)
    if isinstance(value, Exception):
        raise value
    return value


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
        from . import netlink

        links = netlink.read_macvlans(target, own)
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


def _read_tree(ctx: ActionContext, pid: int) -> Found | None:
    """The macvlans of tree ``pid``'s netns and that netns's inode; ``None`` if nothing to save."""
    opened = _open_tree(ctx, pid)
    found = _read_links(*opened) if opened is not None else None
    if opened is not None and found is None:
        ctx.log.debug("no macvlan in the network namespace of tree %d", pid)
    return found


class _Reader(threading.Thread):
    """RPC mode: reads the macvlans in the background; ``post-dump`` takes them.

    It starts before CRIU's first notification, as a ``pre-dump`` read would, and
    may go on while CRIU freezes and dumps the tree (which then cannot change its
    links): the dump never waits for it before ``post-dump``.
    """

    def __init__(self, target: int, own: int, inode: int) -> None:
        super().__init__(name="criu-macvlan-reader", daemon=True)
        self._args = (target, own, inode)
        self._found: Found | None = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._found = _read_links(*self._args)
            if self._found is not None:
                images.netdev_entry_class()  # imported now, not in post-dump (the tree is frozen then)
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


def _stage(ctx: ActionContext, links: list[pb.macvlan_link], inode: int) -> None:
    images.write_atomic(ctx.images.fd, images.STAGED, images.encode(_head(ctx, inode), links))
    ctx.log.info("staged %d macvlan link(s): %s", len(links), ", ".join(lk.name for lk in links))


def _encode_ahead(plan: list[Planned]) -> PreparedMacvlans:
    """The creation requests of ``plan``, parents resolved now and requests encoded (see ``create_prepared``)."""
    from .netlink import PreparedMacvlans, Rtnl

    with Rtnl(None) as host:
        _resolve_parents(host, plan)
    return PreparedMacvlans([(item.link, item.parent_index) for item in plan])


def _prepare_restore(ctx: ActionContext) -> tuple[list[Planned], bool] | None:
    """The links to create and whether to restore their L3 too; ``None`` if the images have none."""
    dir_fd = ctx.images.fd
    netdevs = images.netdev_images(dir_fd)
    sidecar = images.load(dir_fd)
    summaries = {name: images.summarize_netdev(dir_fd, name) for name in netdevs}
    if sidecar is None:
        converted = [f"{n}:{link}" for n, s in summaries.items() for link, _ in s.converted]
        if converted:
            raise ImageError(
                f"{images.SIDECAR} is missing but CRIU's images expect criu-macvlan to create "
                f"{', '.join(converted)}; copy {images.SIDECAR} along with the other images, or run "
                f"'criu-macvlan convert --to-native {ctx.images.path}' to let CRIU restore them itself"
            )
        return None
    empty = restores_l3_itself(ctx, netdevs)
    plan = plan_restore(sidecar, ctx.mappings, ctx)
    if not empty:
        _check_netdev_consistency(sidecar, summaries, ctx.images.path)
        off = {name for s in summaries.values() for name in s.ipv6_off}
        for item in plan:
            item.ipv6_off = item.link.name in off
    return plan, empty


def explain_failure(ctx: ActionContext, log_tail: str) -> str:
    """What a failed restore's CRIU log means for our links, when we can tell; else ``""``.

    CRIU itself brings the links up in a CRIU-managed netns: a MAC already used on
    the parent fails there, with ``-98 ... Address already in use`` and no name.
    """
    if "Address already in use" not in log_tail:
        return ""
    from .netlink import Rtnl, mac_to_str
    from .preflight import clash_text, mac_users

    try:
        sidecar = images.load(ctx.images.fd)
        if sidecar is None:
            return ""
        plan = [item for item in plan_restore(sidecar, ctx.mappings, ctx) if item.link.mode != PASSTHRU]
        with Rtnl(None) as host:
            _resolve_parents(host, plan)
        for item in plan:
            mac = mac_to_str(item.link.address)
            users = mac_users(item.parent_index, mac)
            if users:
                return f"{item.link.name}: {clash_text(mac, item.parent, users)}"
    except CriuMacvlanError:
        pass
    return ""


def restores_l3_itself(ctx: ActionContext, netdevs: list[str]) -> bool:
    """Whether this restore is in empty-netns mode, so the plugin (not CRIU) restores L3.

    CRIU restores a netns's links, addresses and routes from ``netdev-<id>.img``,
    ``ifaddr-<id>.img`` and ``route-<id>.img`` unless ``--empty-ns net`` is given
    (``opts.empty_ns & CLONE_NEWNET`` over RPC, always set by runc). So:

    * the restore's own option says empty (``ctx.empty_ns``: from CRIU's command
      line and config files in action-script mode, from ``criu_opts.empty_ns`` in
      RPC mode): CRIU ignores any netdev image, the plugin does L3;
    * the images hold no netdev image (the dump ran with ``--empty-ns net``): CRIU
      has nothing to restore whatever the option says, the plugin does L3;
    * otherwise CRIU does L3 and the plugin must not (it would fail with EEXIST).
    """
    return bool(ctx.empty_ns) or not netdevs


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
    from . import netlink

    for (_, ino), member in sorted(others.items(), key=lambda kv: kv[1]):
        if _is_external_netns(ctx, ino):
            continue
        try:
            fd = nsutil.open_of_pid(member)
        except CriuMacvlanError:
            continue  # the process exited during the walk
        try:
            links = netlink.read_macvlans(fd, own_fd, with_l3=False)
        finally:
            os.close(fd)
        if links:
            names = ", ".join(link.name for link in links)
            raise CriuMacvlanError(
                f"process {member} of tree {pid} is in a second network namespace (net:[{ino}]) "
                f"with macvlan {names}: criu-macvlan saves the macvlans of the root task's "
                "network namespace only; move them there or dump that subtree separately"
            )


def _check_netdev_consistency(
    sidecar: images.Sidecar, summaries: dict[str, images.NetdevSummary], path: str
) -> None:
    native = [f"{link} ({name})" for name, s in summaries.items() for link, _ in s.native]
    if native:
        raise ImageError(
            f"CRIU's netdev image still has native macvlan entries {', '.join(native)}: the dump "
            f"ran without criu-macvlan's post-dump. Run 'criu-macvlan convert {path}' once, then restore"
        )
    converted = {key for s in summaries.values() for key in s.converted}
    missing = [lk.name for lk in sidecar.links if (lk.name, lk.ifindex) not in converted]
    if missing:
        raise ImageError(
            f"{images.SIDECAR} lists {', '.join(missing)} but CRIU's netdev images do not: "
            "the images do not belong together"
        )


class Planned:
    """One link to create, with its resolved parent."""

    def __init__(self, link: pb.macvlan_link, parent: str) -> None:
        self.link = link
        self.parent = parent
        self.parent_index = 0
        self.ipv6_off = False  # CRIU will restore it with IPv6 disabled


def plan_restore(sidecar: images.Sidecar, mappings: dict[str, str], ctx: ActionContext) -> list[Planned]:
    """Pair every link with its mapped parent; all missing mappings are named in one error."""
    names = {link.name for link in sidecar.links}
    missing = [format_mapping(link.name, "OUT") for link in sidecar.links if link.name not in mappings]
    if missing:
        raise UsageError(f"no parent given for {', '.join(missing)}: {_where_to_map(ctx, missing[0])}")
    for extra in sorted(set(mappings) - names):
        ctx.log.warning("mapping %s names a link the images do not have", format_mapping(extra, mappings[extra]))
    return [Planned(link, mappings[link.name]) for link in sidecar.links]


def _where_to_map(ctx: ActionContext, mapping: str) -> str:
    """Where this caller can give a missing mapping."""
    from . import criuconf

    if ctx.mode is Mode.RPC:  # the CLI and the Python API: their own spelling
        name = mapping[mapping.index("[") + 1 : mapping.index("]")]
        return f"add --macvlan {name}:OUT (criu-macvlan restore; in Python, mappings={{IN: OUT}})"
    if ctx.criu_rpc:
        return (f"add 'external {mapping}' to {criuconf.OWN_CONFIG} or the file named by "
                "$CRIU_MACVLAN_CONFIG (an action script cannot see an RPC client's opts.external)")
    return f"add --external {mapping} (criu's command line or a CRIU config file)"


def _existing(rtnl: Rtnl) -> dict[int, Any]:
    return {msg["index"]: msg for msg in rtnl.links()}


def _resolve_parents(host: Rtnl, plan: list[Planned]) -> None:
    from .netlink import describe_link

    cache: dict[str, dict[str, Any]] = {}
    for item in plan:
        info = cache.get(item.parent)
        if info is None:
            msg = host.link(name=item.parent)
            if msg is None:
                raise NetlinkError(f"parent {item.parent!r} of macvlan {item.link.name!r} does not exist on this host")
            info = cache[item.parent] = describe_link(msg)
        if not info["up"]:
            raise NetlinkError(f"parent {item.parent!r} of macvlan {item.link.name!r} is down")
        if item.link.mtu > info["mtu"]:
            raise NetlinkError(
                f"macvlan {item.link.name!r} has MTU {item.link.mtu}, "
                f"above the {info['mtu']} of its parent {item.parent!r}"
            )
        item.parent_index = info["index"]


def _same_link(msg: Any, link: pb.macvlan_link) -> bool:
    from .netlink import link_kind, mac_to_bytes

    return (
        msg.get_attr("IFLA_IFNAME") == link.name
        and link_kind(msg) == "macvlan"
        and mac_to_bytes(msg.get_attr("IFLA_ADDRESS")) == link.address
    )


def restore_links(
    plan: list[Planned], target: int, with_l3: bool, ctx: ActionContext, requests: PreparedMacvlans | None = None
) -> list[pb.macvlan_link]:
    """Create every planned link in ``target``; on failure remove the ones made here. The links made.

    ``requests``: the plan's requests encoded ahead of time, used when they still
    fit (every link to make, on the same parents).
    """
    from .netlink import Rtnl
    from .watch import CriuWatch

    created: list[pb.macvlan_link] = []
    with Rtnl(None) as host, Rtnl(target) as inside, CriuWatch(ctx.criu_pid) as criu:
        _resolve_parents(host, plan)
        existing = _existing(inside)
        by_name = {msg.get_attr("IFLA_IFNAME"): msg for msg in existing.values()}
        try:
            todo: list[Planned] = []
            for item in plan:
                link = item.link
                there = existing.get(link.ifindex)
                if there is not None and _same_link(there, link):
                    ctx.log.debug("macvlan %s already exists: repeated action", link.name)
                    continue
                if there is not None or link.name in by_name:
                    clash = there.get_attr("IFLA_IFNAME") if there is not None else link.name
                    raise NetlinkError(
                        f"cannot create macvlan {link.name!r} (ifindex {link.ifindex}) on {item.parent!r}: "
                        f"the target netns already has {clash!r}"
                    )
                todo.append(item)
            items = [(item.link, item.parent_index) for item in todo]
            if requests is not None and len(todo) == len(plan) and requests.parents == [i for _, i in items]:
                results = host.create_prepared(requests, target, criu.alive)
            else:
                results = host.create_macvlans(items, target, criu.alive)
            created += [link for link, error in results if error is None]
            for item, (link, error) in zip(todo, results, strict=False):  # no results past a failed batch
                if error is not None:
                    raise NetlinkError(f"cannot create macvlan {link.name!r} on {item.parent!r}: {error}") from error
            # CRIU died meanwhile: nothing will use these links, and its orphaned task keeps their netns
            criu.check(f"the macvlans were being made ({len(created)} of {len(plan)}): removed them")
            if with_l3:
                _restore_l3(plan, inside)
                criu.check("the macvlans' addresses and routes were being restored: removed the macvlans")
            else:
                _keep_ipv6_off([item.link.name for item in todo if item.ipv6_off], target)
        except BaseException:
            for link in reversed(created):
                try:
                    inside.delete_link(link.ifindex)
                except NetlinkError as exc:  # best effort: report the first error, not this one
                    ctx.log.warning("could not remove %s after the failure: %s", link.name, exc)
            raise
    ctx.log.info(
        "created %d macvlan link(s): %s",
        len(created),
        ", ".join(f"{i.link.name}@{i.parent}" for i in plan),
    )
    return created


def _keep_ipv6_off(names: list[str], target: int) -> None:
    """Disable IPv6 on the links ``names`` of netns ``target`` now, as CRIU will.

    CRIU restores a device's sysctls after it sets the device up, and the netns
    defaults only after setup-namespaces: a link made here would come up with IPv6
    on for a moment, and its MLD and DAD frames would tell the switches it moved
    before the connections are locked (and before any announcement).
    """
    if not names:
        return
    from .netlink import entered

    with entered(target):
        for name in names:
            try:
                with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w", encoding="ascii") as f:
                    f.write("1")
            except FileNotFoundError:
                return  # no IPv6 on this host at all
            except OSError as exc:
                raise NetlinkError(f"cannot disable IPv6 on macvlan {name!r} as dumped: {exc.strerror}") from exc


def _restore_l3(plan: list[Planned], inside: Rtnl) -> None:
    from .netlink import errno_of, mac_to_str

    links = [item.link for item in plan]
    for item in plan:
        if item.link.link_flags & IFF_UP:
            try:
                inside.set_up(item.link.ifindex)
            except NetlinkError as exc:
                if errno_of(exc) != errno.EADDRINUSE:
                    raise
                from .preflight import clash_text, mac_users

                mac = mac_to_str(item.link.address)
                clash = clash_text(mac, item.parent, mac_users(item.parent_index, mac))
                raise NetlinkError(f"cannot set macvlan {item.link.name!r} up: {clash}") from exc
    for link in links:
        for addr in link.addrs:
            inside.add_address(link.ifindex, addr)
    # Gateway routes last: their gateway must be reachable through a route of
    # scope link (an address's prefix route, or a device route restored first).
    routes = [(link.ifindex, route) for link in links for route in link.routes]
    for index, route in sorted(routes, key=lambda r: r[1].HasField("gateway")):
        inside.add_route(index, route)
