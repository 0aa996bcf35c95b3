"""The plugin manager: built-in plugins, entry-point plugins, and a typed facade over ``pm.hook``."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterable
from typing import Any

import pluggy

from . import hookspecs
from .context import ActionContext
from .errors import CriuMacvlanError, ExitCode, HookError

ENTRY_POINT_GROUP = "criu_macvlan"
DISABLE_ENV = "CRIU_MACVLAN_DISABLE"
ENTRY_POINT_CACHE = "entry-points"
ENTRY_POINT_CACHE_SIZE = 8
DIST_SUFFIXES = (".dist-info", ".egg-info", ".egg")  # what importlib.metadata finds on sys.path


def _builtin_plugins() -> list[tuple[str, object]]:
    from .plugin import MacvlanPlugin

    return [("macvlan", MacvlanPlugin())]


class Hooks:
    """Runs CRIU actions through the registered plugins."""

    def __init__(self, pm: pluggy.PluginManager, partial: bool = False) -> None:
        self.pm = pm
        self.partial = partial  # some plugins were disabled: not what the installation handles

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

    def rpc_request(self, ctx: ActionContext) -> None:
        """Call ``criu_rpc_request`` (see :mod:`.hookspecs`); a failure is logged, never raised."""
        try:
            self.pm.hook.criu_rpc_request(ctx=ctx)
        except Exception as exc:
            ctx.log.warning("criu_rpc_request hook failed (ignored): %s: %s", type(exc).__name__, exc)

    def handled_actions(self) -> list[str]:
        """CRIU actions at least one registered plugin implements, in CRIU's order.

        An action whose every implementation comes from a plugin declaring the same
        guard file for it (``criu_macvlan_guards``, :class:`~.hookspecs.GuardedPlugin`)
        is listed as ``action?FILE``; the shell shim then starts Python for it only
        when that file exists.
        """
        result = []
        for action, name in hookspecs.ACTIONS.items():
            impls = getattr(self.pm.hook, name).get_hookimpls()
            if not impls:
                continue
            guards = {hookspecs.guards_of(i.plugin).get(action) for i in impls}
            guard = guards.pop() if len(guards) == 1 else None
            result.append(f"{action}?{guard}" if guard else action)
        return result

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
    blocked = [*disable, *disabled_from_env()]
    for name in blocked:
        pm.set_blocked(name)
    for name, plugin in _builtin_plugins():
        if not pm.is_blocked(name):
            pm.register(plugin, name=name)
    if entry_points:
        for name, value in _entry_points():
            if not pm.is_blocked(name) and not pm.has_plugin(name):
                pm.register(_load(value), name=name)
    pm.check_pending()
    return Hooks(pm, partial=bool(blocked))


def _cache_dir() -> str:
    return os.path.join(sys.prefix, "share", "criu-macvlan")


def actions_cache_path() -> str:
    """Where ``hooks/criu-macvlan-action`` looks up which actions need Python at all."""
    return os.path.join(_cache_dir(), "handled-actions")


def _load(value: str) -> object:
    """Load an entry point's object from ``module:attr.path`` (the entry-point syntax)."""
    module, _, attrs = value.partition(":")
    obj: object = importlib.import_module(module.strip())
    for attr in filter(None, attrs.strip().split(".")):
        obj = getattr(obj, attr)
    return obj


def _entry_points() -> list[tuple[str, str]]:
    """``(name, value)`` of the entry points in our group, cached per state of ``sys.path``.

    Scanning every installed distribution (``importlib.metadata``) costs tens of
    milliseconds, paid by each action CRIU runs. A result is keyed on what that
    scan reads: the directories on ``sys.path`` and the distribution metadata
    (``*.dist-info``, ``*.egg-info``, with their mtimes) each one holds. Other
    files coming and going there (CRIU's own in its working directory, say)
    keep the result; installing, upgrading or removing a package does not. The
    file keeps the ``ENTRY_POINT_CACHE_SIZE`` latest results: the CLI (its
    script's directory first on ``sys.path``) and the action script (``-P``)
    each find their own.

    Each result also records the directories' own mtimes, which change whenever a
    distribution comes or goes in them: while they are unchanged, a ``stat`` per
    directory finds the result without listing any. The file is one result per
    line, its fields ``repr`` strings separated by tabs (``repr`` never writes a raw tab or newline),
    so a lookup compares strings and parses nothing but the entry points it returns.
    """
    path = os.path.join(_cache_dir(), ENTRY_POINT_CACHE)
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\n").split("\t") for line in f]
    except (OSError, ValueError):
        lines = []
    lines = [line for line in lines if len(line) == 3]
    dirs = repr(_directories_key())
    found = _cached(lines, 0, dirs)
    if found is None:
        dists = repr(_metadata_key())
        found = _cached(lines, 1, dists)
        if found is None:
            from importlib.metadata import entry_points

            found = sorted({(ep.name, ep.value) for ep in entry_points(group=ENTRY_POINT_GROUP)})
            lines = [[dirs, dists, repr(found)], *lines][:ENTRY_POINT_CACHE_SIZE]
            _write_cache(path, "".join("\t".join(line) + "\n" for line in lines))
    return found


def _cached(lines: list[list[str]], field: int, key: str) -> list[tuple[str, str]] | None:
    """The entry points of the first cached result whose key ``field`` is ``key``; ``None`` if none."""
    import ast  # already loaded by pluggy (inspect)

    for line in lines:
        if line[field] == key:
            try:
                found = ast.literal_eval(line[2])
                return [(str(n), str(v)) for n, v in found]
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return None
    return None


def _directories_key() -> list[tuple[str, int]]:
    """``[(entry, mtime_ns), ...]`` of the ``sys.path`` entries that exist (a zip archive's own mtime)."""
    key = []
    for entry in sys.path:
        with contextlib.suppress(OSError):
            key.append((entry, os.stat(entry or ".").st_mtime_ns))
    return key


def _metadata_key() -> list[list[Any]]:
    """``[[entry, [[name, mtime_ns], ...]], ...]``: each ``sys.path`` directory and its distributions."""
    key: list[list[Any]] = []
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as it:
                dists = sorted([d.name, d.stat().st_mtime_ns] for d in it if d.name.endswith(DIST_SUFFIXES))
        except NotADirectoryError:  # a zip archive: its own mtime
            with contextlib.suppress(OSError):
                key.append([entry, os.stat(entry).st_mtime_ns])
            continue
        except OSError:
            continue
        key.append([entry, dists])
    return key


def _write_cache(path: str, content: str) -> None:
    """Best effort: a read-only installation, or a directory that is not ours alone, runs without the cache."""
    from .images import replace

    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        st = os.fstat(dir_fd)
        if st.st_uid == os.geteuid() and not st.st_mode & 0o022:
            replace(dir_fd, os.path.basename(path), content.encode("utf-8"), 0o644)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_actions_cache(hooks: Hooks) -> None:
    """Record the handled actions for the shell shim; best effort, only when changed.

    Never with plugins disabled (``--disable``, ``CRIU_MACVLAN_DISABLE``): the cache
    is shared by every later run, and would make them skip the disabled plugins' actions.
    """
    if hooks.partial:
        return
    path = actions_cache_path()
    content = " ".join(hooks.handled_actions()) + "\n"
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == content:
                return
    except OSError:
        pass
    _write_cache(path, content)
