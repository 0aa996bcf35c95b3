"""The plugin manager: built-in plugins, entry-point plugins, and a typed facade over ``pm.hook``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

import pluggy

from . import hookspecs
from .context import ActionContext
from .errors import CriuMacvlanError, ExitCode, HookError

ENTRY_POINT_GROUP = "criu_macvlan"
DISABLE_ENV = "CRIU_MACVLAN_DISABLE"


def _builtin_plugins() -> list[tuple[str, object]]:
    from .plugin import MacvlanPlugin

    return [("macvlan", MacvlanPlugin())]


class Hooks:
    """Runs CRIU actions through the registered plugins."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm

    def run(self, ctx: ActionContext) -> None:
        """Call the hook of ``ctx.action``; a failure becomes a :class:`HookError`.

        Unknown actions (a newer CRIU) are ignored.
        """
        name = hookspecs.ACTIONS.get(ctx.action)
        if name is None:
            ctx.log.debug("ignoring unknown CRIU action %r", ctx.action)
            return
        caller = getattr(self.pm.hook, name)
        try:
            caller(ctx=ctx)
        except HookError:
            raise
        except CriuMacvlanError as exc:
            raise HookError(ctx.action, str(exc), exc.exit_code) from exc
        except Exception as exc:
            raise HookError(ctx.action, f"internal error: {type(exc).__name__}: {exc}", ExitCode.BUG) from exc

    def handled_actions(self) -> list[str]:
        """CRIU actions at least one registered plugin implements, in CRIU's order."""
        return [
            action
            for action, name in hookspecs.ACTIONS.items()
            if getattr(self.pm.hook, name).get_hookimpls()
        ]

    def plugin_names(self) -> list[str]:
        return sorted(n for n, p in self.pm.list_name_plugin() if p is not None)


def disabled_from_env() -> list[str]:
    return [n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()]


def plugin_manager(disable: Iterable[str] = (), entry_points: bool = True) -> Hooks:
    """Build the manager: built-ins first, then the ``criu_macvlan`` entry-point group.

    ``disable`` names plugins (built-in or third-party) not to load, as does the
    comma-separated ``CRIU_MACVLAN_DISABLE`` environment variable.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in [*disable, *disabled_from_env()]:
        pm.set_blocked(name)
    for name, plugin in _builtin_plugins():
        if not pm.is_blocked(name):
            pm.register(plugin, name=name)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.check_pending()
    return Hooks(pm)


def actions_cache_path() -> str:
    """Where ``hooks/criu-macvlan-action`` looks up which actions need Python at all."""
    return os.path.join(sys.prefix, "share", "criu-macvlan", "handled-actions")


def write_actions_cache(hooks: Hooks) -> None:
    """Record the handled actions for the shell shim; best effort, only when changed."""
    path = actions_cache_path()
    content = " ".join(hooks.handled_actions()) + "\n"
    try:
        with open(path, encoding="ascii") as f:
            if f.read() == content:
                return
    except OSError:
        pass
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(content)
        os.replace(tmp, path)
    except OSError:
        pass  # read-only installation: the shim then runs Python for every action
