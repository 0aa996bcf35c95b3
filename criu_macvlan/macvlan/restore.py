"""Restore: recreate the dumped macvlans in the restored tree's new netns.

``setup-namespaces`` recreates each link in the restored tree's new netns,
attached to the parent its ``macvlan[IN]:OUT`` mapping names, with the same
name, ifindex, MAC, MTU, mode, flags and the rest. In CRIU-managed mode CRIU
then sets the links up and restores their addresses and routes; in empty-netns
mode (``--empty-ns net``: CRIU saved no netdev image) the plugin does that too.
Over RPC the images are read, the links planned and their requests encoded in
``criu_rpc_request``, while CRIU starts.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import TYPE_CHECKING, Any

from .. import announcer, images, netdev
from .. import macvlan_pb2 as pb
from .. import netns as nsutil
from ..announce import IFF_UP
from ..context import ActionContext, Mode
from ..errors import CriuMacvlanError, ImageError, NetlinkError, UsageError
from ..mappings import format_mapping
from .announcing import arm_announce, image_frames, schedule
from .session import require_pid, session

if TYPE_CHECKING:
    from ..netlink import PreparedMacvlans, Rtnl
    from ..netlink.codec import LinkFacts
    from ..netlink.rtnl import Results
    from ..watch import CriuWatch

PASSTHRU = 8


class Planned:  # plain: the cold path defines no dataclass or NamedTuple (tests/test_cold_imports.py)
    """One link to create, with its parent; changed in place (``parent_index``, ``ipv6_off``)."""

    def __init__(self, link: pb.macvlan_link, parent: str) -> None:
        self.link = link
        self.parent = parent  # the host interface its mapping names
        self.parent_index = 0  # that interface's ifindex, once resolved (_resolve_parents)
        self.ipv6_off = False  # CRIU will restore it with IPv6 disabled


class RestorePlan:
    """The links a restore makes, and whether it restores their addresses and routes too."""

    __slots__ = ("links", "with_l3")

    def __init__(self, links: list[Planned], with_l3: bool) -> None:
        self.links, self.with_l3 = links, with_l3


def start_preparing(ctx: ActionContext) -> None:
    """``criu_rpc_request`` of a restore: read the images, plan the links, encode their requests."""
    s = session(ctx)
    try:
        plan = s.plan = prepare_restore(ctx)
        if plan is not None:
            s.requests = _encode_ahead(plan.links)
            s.frames = image_frames([item.link for item in plan.links])
            s.schedule_known, s.schedule = True, schedule(ctx)
            if s.schedule is not None and s.schedule.rounds > 1 and s.frames != []:
                with contextlib.suppress(OSError):  # else post-setup-namespaces forks it
                    s.repeater = announcer.Repeater(s.schedule)  # now, not while CRIU waits
    except Exception as exc:  # raised by setup-namespaces: one report, not two
        s.error = exc


def setup_namespaces(ctx: ActionContext) -> None:
    s = session(ctx)
    requests, s.requests = s.requests, None
    try:
        s.take_error()
        prepared, s.plan = s.plan, None
        plan = prepared if prepared is not None else prepare_restore(ctx)
        if plan is None:
            return
        pid = require_pid(ctx)
        target = nsutil.open_of_pid(pid)
        own = nsutil.open_own()
        try:
            if nsutil.same(target, own):
                raise CriuMacvlanError(
                    f"restored tree {pid} is in our own network namespace: the dump had macvlans "
                    "in a netns of its own, restore it into a new one"
                )
            created = restore_links(plan.links, target, with_l3=plan.with_l3, ctx=ctx, requests=requests)
            if created:
                arm_announce(ctx, created)
        finally:
            os.close(target)
            os.close(own)
    finally:
        if requests is not None:
            requests.close()


def _encode_ahead(plan: list[Planned]) -> PreparedMacvlans:
    """The creation requests of ``plan``, parents resolved now and requests encoded (see ``create_prepared``)."""
    from ..netlink import PreparedMacvlans, Rtnl

    with Rtnl(None) as host:
        _resolve_parents(host, plan)
    return PreparedMacvlans([(item.link, item.parent_index) for item in plan])


def prepare_restore(ctx: ActionContext) -> RestorePlan | None:
    """The links to create and whether to restore their L3 too; ``None`` if the images have none."""
    dir_fd = ctx.images.fd
    netdevs = netdev.netdev_images(dir_fd)
    sidecar = images.load(dir_fd)
    summaries = {name: netdev.summarize_netdev(dir_fd, name) for name in netdevs}
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
    return RestorePlan(plan, empty)


def explain_failure(ctx: ActionContext, log_tail: str) -> str:
    """What a failed restore's CRIU log means for our links, when we can tell; else ``""``.

    CRIU itself brings the links up in a CRIU-managed netns: a MAC already used on
    the parent fails there, with ``-98 ... Address already in use`` and no name.
    """
    if "Address already in use" not in log_tail:
        return ""
    from ..netlink import Rtnl, mac_to_str
    from ..preflight import clash_text, mac_users

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


def _check_netdev_consistency(
    sidecar: images.Sidecar, summaries: dict[str, netdev.NetdevSummary], path: str
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
    from .. import criuconf

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
    from ..netlink import describe_link

    cache: dict[str, LinkFacts] = {}
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
    from ..netlink import link_kind, mac_to_bytes

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

    The links are made from our own netns (``IFLA_NET_NS_FD``), at once: the target
    netns is new, and the kernel refuses a name or ifindex taken there. Only then is
    it entered, to see what is there: a repeated action's links are kept, any other
    link in the way is an error naming it.
    """
    from ..netlink import Rtnl, errno_of
    from ..watch import CriuWatch

    created: list[pb.macvlan_link] = []
    with contextlib.ExitStack() as stack:
        host = stack.enter_context(Rtnl(None))
        criu = stack.enter_context(CriuWatch(ctx.criu_pid))
        opened: list[Rtnl] = []

        def inside() -> Rtnl:  # a socket in the target netns, once needed (no setns otherwise)
            if not opened:
                opened.append(stack.enter_context(Rtnl(target)))
            return opened[0]

        _resolve_parents(host, plan)
        try:
            todo = plan
            results = _create(host, todo, target, criu, requests)
            created += [link for link, error in results if error is None]
            if any(error is not None and errno_of(error) in _TAKEN for _, error in results):
                _remove(inside(), created, ctx)  # made just now: what is in the way decides
                todo = _still_to_make(plan, inside(), ctx)
                results = _create(host, todo, target, criu)
                created += [link for link, error in results if error is None]
            for item, (link, error) in zip(todo, results, strict=False):  # no results past a failed batch
                if error is not None:
                    raise NetlinkError(f"cannot create macvlan {link.name!r} on {item.parent!r}: {error}") from error
            # CRIU died meanwhile: nothing will use these links, and its orphaned task keeps their netns
            criu.check(f"the macvlans were being made ({len(created)} of {len(plan)}): removed them")
            if with_l3:
                _restore_l3(plan, inside())
                criu.check("the macvlans' addresses and routes were being restored: removed the macvlans")
            else:
                _keep_ipv6_off([item.link.name for item in todo if item.ipv6_off], target)
        except BaseException:
            if created:
                _remove(inside(), created, ctx)
            raise
    ctx.log.info(
        "created %d macvlan link(s): %s",
        len(created),
        ", ".join(f"{i.link.name}@{i.parent}" for i in plan),
    )
    return created


_TAKEN = (errno.EEXIST, errno.EBUSY)  # a link of that name, or that ifindex, is in the target netns


def _create(host: Rtnl, todo: list[Planned], target: int, criu: CriuWatch,
            requests: PreparedMacvlans | None = None) -> Results:
    items = [(item.link, item.parent_index) for item in todo]
    if requests is not None and requests.parents == [index for _, index in items]:
        return host.create_prepared(requests, target, criu.alive)
    return host.create_macvlans(items, target, criu.alive)


def _still_to_make(plan: list[Planned], inside: Rtnl, ctx: ActionContext) -> list[Planned]:
    """The planned links not in the target netns yet; a link in the way of one is an error."""
    existing = _existing(inside)
    by_name = {msg.get_attr("IFLA_IFNAME"): msg for msg in existing.values()}
    todo = []
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
    return todo


def _remove(inside: Rtnl, links: list[pb.macvlan_link], ctx: ActionContext) -> None:
    """Remove the links made here, last first, and empty ``links`` (best effort: the error that
    made us remove them is the one reported)."""
    for link in reversed(links):
        try:
            inside.delete_link(link.ifindex)
        except NetlinkError as exc:
            ctx.log.warning("could not remove %s after the failure: %s", link.name, exc)
    links.clear()


def _keep_ipv6_off(names: list[str], target: int) -> None:
    """Disable IPv6 on the links ``names`` of netns ``target`` now, as CRIU will.

    CRIU restores a device's sysctls after it sets the device up, and the netns
    defaults only after setup-namespaces: a link made here would come up with IPv6
    on for a moment, and its MLD and DAD frames would tell the switches it moved
    before the connections are locked (and before any announcement).
    """
    if not names:
        return
    from ..netlink import entered

    with entered(target):
        for name in names:
            try:
                with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w", encoding="utf-8") as f:
                    f.write("1")
            except FileNotFoundError:
                return  # no IPv6 on this host at all
            except OSError as exc:
                raise NetlinkError(f"cannot disable IPv6 on macvlan {name!r} as dumped: {exc.strerror}") from exc


def _restore_l3(plan: list[Planned], inside: Rtnl) -> None:
    from ..netlink import errno_of, mac_to_str

    links = [item.link for item in plan]
    for item in plan:
        if item.link.link_flags & IFF_UP:
            try:
                inside.set_up(item.link.ifindex)
            except NetlinkError as exc:
                if errno_of(exc) != errno.EADDRINUSE:
                    raise
                from ..preflight import clash_text, mac_users

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
