"""The built-in macvlan plugin: its hooks, each handing over to :mod:`.macvlan`.

Dump (:mod:`.macvlan.dump`): ``pre-dump`` reads and stages the macvlans of the
tree's netns, ``post-dump`` commits ``macvlan.img`` and makes CRIU's netdev
entries EXTLINK, ``network-unlock`` drops what a failed dump staged.

Restore (:mod:`.macvlan.restore`): ``setup-namespaces`` recreates the links in the
restored tree's new netns on the parents the mappings name (and their L3 in
empty-netns mode); ``post-setup-namespaces`` announces them
(:mod:`.macvlan.announcing`).

Over RPC ``criu_rpc_request`` starts the slow part of either while CRIU starts up
(:mod:`.macvlan.session`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from . import announce, images
from .context import ActionContext
from .hookspecs import hookimpl
from .macvlan import announcing, dump, restore  # here, not in the hooks: `serve` preloads this module


class MacvlanPlugin:
    """Saves and recreates the macvlan links of a dumped tree's network namespace."""

    # Guard files (hookspecs.GuardedPlugin): network-unlock has work only when a failed dump
    # left a stage behind; post-setup-namespaces only in RPC mode (in action-script mode the
    # shim wakes the announcer setup-namespaces left).
    criu_macvlan_guards: ClassVar[Mapping[str, str]] = {
        "network-unlock": images.STAGED,
        "post-setup-namespaces": announce.GUARD,
    }

    @hookimpl
    def criu_rpc_request(self, ctx: ActionContext) -> None:
        # RPC mode: the slow parts of the dump and the restore run while CRIU works.
        if ctx.action == "dump":
            dump.start_reading(ctx)
        elif ctx.action == "restore":
            restore.start_preparing(ctx)

    @hookimpl
    def criu_pre_dump(self, ctx: ActionContext) -> None:
        dump.pre_dump(ctx)

    @hookimpl
    def criu_post_dump(self, ctx: ActionContext) -> None:
        dump.post_dump(ctx)

    @hookimpl
    def criu_network_unlock(self, ctx: ActionContext) -> None:
        dump.network_unlock(ctx)

    @hookimpl
    def criu_setup_namespaces(self, ctx: ActionContext) -> None:
        restore.setup_namespaces(ctx)

    @hookimpl
    def criu_post_setup_namespaces(self, ctx: ActionContext) -> None:
        announcing.post_setup_namespaces(ctx)
