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

from . import images
from .context import ActionContext
from .hookspecs import hookimpl

ANNOUNCE_GUARD = ".criu-macvlan.announce"  # never written: the shim alone handles post-setup-namespaces


class MacvlanPlugin:
    """Saves and recreates the macvlan links of a dumped tree's network namespace.

    Each hook imports the module of its phase when first called: a cold action loads only what
    it runs (a restore never the dump's modules). `serve` and the warm helper preload them all.
    """

    # Guard files (hookspecs.GuardedPlugin): network-unlock has work only when a failed dump
    # left a stage behind; post-setup-namespaces only in RPC mode (in action-script mode the
    # shim wakes the announcer setup-namespaces left).
    criu_macvlan_guards: ClassVar[Mapping[str, str]] = {
        "network-unlock": images.STAGED,
        "post-setup-namespaces": ANNOUNCE_GUARD,
    }

    @hookimpl
    def criu_rpc_request(self, ctx: ActionContext) -> None:
        # RPC mode: the slow parts of the dump and the restore run while CRIU works.
        if ctx.action == "dump":
            from .macvlan import dump

            dump.start_reading(ctx)
        elif ctx.action == "restore":
            from .macvlan import restore

            restore.start_preparing(ctx)

    @hookimpl
    def criu_pre_dump(self, ctx: ActionContext) -> None:
        from .macvlan import dump

        dump.pre_dump(ctx)

    @hookimpl
    def criu_post_dump(self, ctx: ActionContext) -> None:
        from .macvlan import dump

        dump.post_dump(ctx)

    @hookimpl
    def criu_network_unlock(self, ctx: ActionContext) -> None:
        from .macvlan import dump

        dump.network_unlock(ctx)

    @hookimpl
    def criu_setup_namespaces(self, ctx: ActionContext) -> None:
        from .macvlan import restore

        restore.setup_namespaces(ctx)

    @hookimpl
    def criu_post_setup_namespaces(self, ctx: ActionContext) -> None:
        from .macvlan import announcing

        announcing.post_setup_namespaces(ctx)
