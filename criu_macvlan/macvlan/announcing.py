"""Announce the restored links' MACs (see docs/announce.md): arm it in ``setup-namespaces``, send it after.

In action-script mode ``setup-namespaces`` leaves an announcer process that the
shell shim wakes at ``post-setup-namespaces``; over RPC ``post-setup-namespaces``
sends the first round itself and hands the later ones to a repeater. A failure
to announce is a warning, never a failed restore.
"""

from __future__ import annotations

import os
import socket

from .. import announce, announcer
from .. import macvlan_pb2 as pb
from ..context import ActionContext, Mode
from ..errors import CriuMacvlanError, UsageError
from .session import Armed, require_pid, session


def image_frames(links: list[pb.macvlan_link]) -> list[announce.LinkFrames] | None:
    """The frames of the links that are up, from the images alone, made before CRIU needs them
    (``[]``: no link is up, nothing to announce); ``None`` when a link that is up has IPv6
    addresses: whether they are still tentative after the restore (no advertisement then) is
    known only from the restored netns."""
    up = [link for link in links if link.link_flags & announce.IFF_UP]
    if any(a.family == socket.AF_INET6 for link in up for a in link.addrs):
        return None
    result = []
    for link in up:
        frames, what = announce.frames_for(link.address, [a.address for a in link.addrs], [])
        result.append(announce.LinkFrames(link.name, frames, what))
    return result


def schedule(ctx: ActionContext) -> announce.Schedule | None:
    """The announce schedule of this restore (``None``: off); a bad setting is a warning."""
    try:
        return announce.configured(ctx.announce, os.environ)
    except UsageError as exc:
        ctx.log.warning("%s; announcing with the default %s", exc, announce.DEFAULT.spec())
        return announce.DEFAULT


def arm_announce(ctx: ActionContext, created: list[pb.macvlan_link]) -> None:
    """Prepare the announcement of the links just made; never fails the restore."""
    indexes = [link.ifindex for link in created]
    s = session(ctx)
    if s.schedule_known:
        chosen, s.schedule, s.schedule_known = s.schedule, None, False
    else:
        chosen = schedule(ctx)
    if chosen is None:
        ctx.log.debug("announce is off")
        return
    known = image_frames(created)
    if known == []:  # restored down: no announcer, no repeats (the links' own traffic starts when up)
        ctx.log.debug("announce: no restored link is up")
    elif ctx.mode is Mode.RPC:
        s.armed = Armed(indexes, {link.name for link in created}, chosen)
    elif ctx.criu_pid is None or not announcer.arm(ctx.criu_pid, require_pid(ctx), indexes, chosen, known,
                                                   ctx.later, ctx.served):
        ctx.log.warning("%s", announce.warning("the restored links", "cannot start the announcer"))


def post_setup_namespaces(ctx: ActionContext) -> None:
    # Addresses restored, the network still locked, no task runs yet: the first round now.
    s = session(ctx)
    armed, s.armed = s.armed, None
    if armed is None:
        return
    known, s.frames = s.frames, None
    if known is not None:
        known = [link for link in known if link.name in armed.names]  # the links this restore made
    try:
        pid = require_pid(ctx)
        pidfd = os.pidfd_open(pid)
        try:
            links, errors, sock = announcer.first_round(pid, pidfd, armed.indexes, known)
        finally:
            os.close(pidfd)
        announcer.close_later(sock)
        for name, error in errors.items():
            ctx.log.warning("%s", announce.warning(name, error))
        repeater, s.repeater = s.repeater, None
        if repeater is not None:
            repeater.go(pid, links)
        else:
            announcer.repeat_detached(pid, links, armed.schedule)
        ctx.log.info("announced %s", announce.summary(links))
    except (OSError, CriuMacvlanError) as exc:
        ctx.log.warning("%s", announce.warning("the restored links", str(exc)))
