"""Hook specifications: one hook per CRIU action, grouped by phase.

CRIU announces the stages of a dump or restore as *actions*: it runs
``--action-script`` programs with ``CRTOOLS_SCRIPT_ACTION`` set, and in RPC mode
sends the same names as ``NOTIFY`` messages to the RPC client. criu-macvlan turns
each action into a call of the pluggy hook of the same name (``pre-dump`` ->
``criu_pre_dump``), with one :class:`~criu_macvlan.context.ActionContext`. One more
hook, ``criu_rpc_request``, belongs to our RPC driver, not to a CRIU action.

Contract shared by every hook:

* A hook reports failure by raising :class:`~criu_macvlan.errors.CriuMacvlanError`
  (any other exception is a bug and is reported as one). Failure of a hook makes
  the action script exit non-zero, or the RPC driver answer ``notify_success=false``;
  CRIU then aborts the dump or restore.
* Hooks must be idempotent: CRIU (or an engine that both sends RPC notifications and
  runs config-file scripts) may deliver the same action twice; the second delivery
  must succeed and change nothing.
* Return values are ignored.

One optional plugin attribute belongs to the contract, ``criu_macvlan_guards``
(see :class:`GuardedPlugin`): ``{action: FILE}``, "this plugin has nothing to do
for ``action`` unless ``FILE`` exists in the images directory". The shell hook
then starts Python for that action only when ``FILE`` is there, provided every
plugin implementing the action declares the same guard (``handled-actions``
lists it as ``action?FILE``). A plugin without it runs for every action it
implements. The hook must still cope with being called without ``FILE`` (RPC
mode calls every hook, and another plugin may need the action).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Protocol

import pluggy

if TYPE_CHECKING:
    from .context import ActionContext

PROJECT = "criu_macvlan"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
GUARDS = "criu_macvlan_guards"


class GuardedPlugin(Protocol):
    """A plugin that declares guard files: ``{action: FILE}`` (see the module's docstring)."""

    criu_macvlan_guards: ClassVar[Mapping[str, str]]


def guards_of(plugin: object) -> Mapping[str, str]:
    """``plugin``'s ``criu_macvlan_guards``; ``{}`` for a plugin without guards."""
    guards: Mapping[str, str] = getattr(plugin, GUARDS, {})
    return guards

# --------------------------------------------------------------------- dump


@hookspec
def criu_pre_dump(ctx: ActionContext) -> None:
    """Before CRIU freezes the tree (``pre-dump``).

    ``ctx.pid`` is the root task of the tree being dumped. The tree still runs:
    this is the place for slow reads, staged in the images directory for
    ``post-dump`` to commit. The dump may still fail after this hook.
    """


@hookspec
def criu_network_lock(ctx: ActionContext) -> None:
    """CRIU is about to lock the network of a tree with its own netns (``network-lock``)."""


@hookspec
def criu_network_unlock(ctx: ActionContext) -> None:
    """CRIU unlocks the network (``network-unlock``).

    Sent after a failed dump, and after a successful one when the tree keeps
    running (``--leave-running``). Staged state that ``post-dump`` did not commit
    must be discarded here.
    """


@hookspec
def criu_post_dump(ctx: ActionContext) -> None:
    """All images are written; the tree is still frozen (``post-dump``).

    Commit what ``pre-dump`` staged. Failing here makes CRIU resume the tree and
    report the dump as failed.
    """


# ------------------------------------------------------------------ restore


@hookspec
def criu_pre_restore(ctx: ActionContext) -> None:
    """Before CRIU starts to restore (``pre-restore``); no task exists yet."""


@hookspec
def criu_setup_namespaces(ctx: ActionContext) -> None:
    """The restored tree's namespaces exist; links, addresses and tasks do not (``setup-namespaces``).

    ``ctx.pid`` is the restored root task (in the new namespaces). Links that CRIU
    expects a script to provide (``EXTLINK`` netdev entries) must be created here.
    """


@hookspec
def criu_post_setup_namespaces(ctx: ActionContext) -> None:
    """CRIU restored the namespaces' contents (``post-setup-namespaces``)."""


@hookspec
def criu_post_restore(ctx: ActionContext) -> None:
    """All tasks are restored but not yet resumed (``post-restore``); ``ctx.pid`` is set."""


@hookspec
def criu_pre_resume(ctx: ActionContext) -> None:
    """Right before the restored tasks resume (``pre-resume``)."""


@hookspec
def criu_post_resume(ctx: ActionContext) -> None:
    """The restored tasks run (``post-resume``)."""


# ------------------------------------------------------------------- other


@hookspec
def criu_pre_stream(ctx: ActionContext) -> None:
    """Before CRIU connects to an image streamer (``pre-stream``)."""


@hookspec
def criu_orphan_pts_master(ctx: ActionContext) -> None:
    """An orphan pty master was sent to the RPC client (``orphan-pts-master``)."""


@hookspec
def criu_status_ready(ctx: ActionContext) -> None:
    """A lazy-pages or page server is ready to accept connections (``status-ready``)."""


@hookspec
def criu_query_ext_files(ctx: ActionContext) -> None:
    """CRIU asks the RPC client for external files (``query-ext-files``)."""


# --------------------------------------------------------------- RPC driver


@hookspec
def criu_rpc_request(ctx: ActionContext) -> None:
    """RPC mode only: the driver has just sent a dump or restore request.

    ``ctx.action`` is ``"dump"`` or ``"restore"``; ``ctx.pid`` is the tree to dump
    (``None`` on restore). CRIU now starts, probes the kernel and reads the images on
    its own before its first notification: work done here
    (imports, reading the images or the live netns) is off the critical path of the
    request. Keep the results in ``ctx.state`` for the action hooks of the same
    request, which must still work without them (action-script mode never calls
    this hook). Do not raise: keep an error in ``ctx.state`` and raise it from the
    action hook it belongs to. An exception raised here anyway is logged and
    ignored.
    """


#: Hooks called by our RPC driver itself, not for a CRIU action.
DRIVER_HOOKS: tuple[str, ...] = ("criu_rpc_request",)

#: CRIU action name -> hook name, in the order of ``criu/action-scripts.c``.
ACTIONS: dict[str, str] = {
    "pre-stream": "criu_pre_stream",
    "pre-dump": "criu_pre_dump",
    "post-dump": "criu_post_dump",
    "pre-restore": "criu_pre_restore",
    "post-restore": "criu_post_restore",
    "network-lock": "criu_network_lock",
    "network-unlock": "criu_network_unlock",
    "setup-namespaces": "criu_setup_namespaces",
    "post-setup-namespaces": "criu_post_setup_namespaces",
    "post-resume": "criu_post_resume",
    "pre-resume": "criu_pre_resume",
    "orphan-pts-master": "criu_orphan_pts_master",
    "status-ready": "criu_status_ready",
    "query-ext-files": "criu_query_ext_files",
}
