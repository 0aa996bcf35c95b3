"""Hook specifications and the plugin manager (no root needed)."""

from __future__ import annotations

import inspect
import logging
import os
import sys
import textwrap
from pathlib import Path

import pytest

from criu_macvlan import hookspecs, images, manager
from criu_macvlan.context import ActionContext, ImagesDir, Mode
from criu_macvlan.errors import ExitCode, HookError, ImageError

# CRIU 4.1's action names, from ``action_names[]`` in criu/action-scripts.c (copied at
# development time from the CRIU source; a newer CRIU with more actions is handled by
# Hooks.run ignoring unknown names, and this list is then updated by hand).
CRIU_41_ACTIONS = [
    "pre-stream",
    "pre-dump",
    "post-dump",
    "pre-restore",
    "post-restore",
    "network-lock",
    "network-unlock",
    "setup-namespaces",
    "post-setup-namespaces",
    "pre-resume",
    "post-resume",
    "orphan-pts-master",
    "status-ready",
    "query-ext-files",
]


def hookspec_functions() -> dict[str, object]:
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if inspect.isfunction(fn) and getattr(fn, f"{hookspecs.PROJECT}_spec", None) is not None
    }


def test_actions_cover_exactly_criu_actions() -> None:
    assert sorted(hookspecs.ACTIONS) == sorted(CRIU_41_ACTIONS)
    assert len(set(hookspecs.ACTIONS.values())) == len(hookspecs.ACTIONS)


def test_every_action_has_a_hookspec_and_back() -> None:
    specs = hookspec_functions()
    assert set(hookspecs.ACTIONS.values()) | set(hookspecs.DRIVER_HOOKS) == set(specs)
    for action, hook in hookspecs.ACTIONS.items():
        assert hook == "criu_" + action.replace("-", "_")


@pytest.mark.parametrize("name", sorted(hookspec_functions()))
def test_hookspec_documented_and_takes_ctx(name: str) -> None:
    fn = hookspec_functions()[name]
    assert inspect.getdoc(fn), f"{name} has no docstring"
    assert list(inspect.signature(fn).parameters) == ["ctx"]  # type: ignore[arg-type]


# ------------------------------------------------------------ the manager


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(manager.DISABLE_ENV, raising=False)


@pytest.fixture
def ctx(tmp_path: Path) -> ActionContext:
    images = ImagesDir.open(str(tmp_path))
    try:
        yield ActionContext(action="pre-restore", mode=Mode.RPC, images=images)  # type: ignore[misc]
    finally:
        images.close()


def test_builtin_registered(clean_env: None) -> None:
    hooks = manager.plugin_manager(entry_points=False)
    assert hooks.plugin_names() == ["macvlan"]
    handled = hooks.handled_actions()
    assert {"pre-dump", "post-dump", f"network-unlock?{images.STAGED}", "setup-namespaces"} <= set(handled)
    plain = [word.split("?")[0] for word in handled]
    assert plain == [a for a in hookspecs.ACTIONS if a in plain]  # CRIU's order


def test_disable_by_name(clean_env: None) -> None:
    hooks = manager.plugin_manager(disable=["macvlan"], entry_points=False)
    assert hooks.plugin_names() == []
    assert hooks.handled_actions() == []


def test_disable_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(manager.DISABLE_ENV, " other , macvlan,")
    assert manager.disabled_from_env() == ["other", "macvlan"]
    assert manager.plugin_manager(entry_points=False).plugin_names() == []


FAKE_PLUGIN = """
from criu_macvlan.errors import ImageError
from criu_macvlan.hookspecs import hookimpl

calls = []

@hookimpl
def criu_pre_restore(ctx):
    calls.append(ctx.action)

@hookimpl
def criu_status_ready(ctx):
    raise ImageError("fake: broken image")

@hookimpl
def criu_post_resume(ctx):
    raise KeyError("oops")
"""


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A plugin package installed the way pip would: a module plus a dist-info with entry points."""
    site = tmp_path / "site"
    modname = f"cmv_fake_plugin_{os.getpid()}"
    (site / "cmv_fake-1.0.dist-info").mkdir(parents=True)
    (site / f"{modname}.py").write_text(textwrap.dedent(FAKE_PLUGIN))
    info = site / "cmv_fake-1.0.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cmv-fake\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{manager.ENTRY_POINT_GROUP}]\nfake = {modname}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(manager, "_cache_dir", lambda: str(tmp_path / "cache"))  # never the real one
    yield modname  # type: ignore[misc]
    sys.modules.pop(modname, None)


def test_entry_point_plugin_loads_and_runs(clean_env: None, fake_distribution: str, ctx: ActionContext) -> None:
    hooks = manager.plugin_manager()
    assert hooks.plugin_names() == ["fake", "macvlan"]
    assert "pre-restore" in hooks.handled_actions()
    assert "status-ready" in hooks.handled_actions()
    hooks.run(ctx)
    assert sys.modules[fake_distribution].calls == ["pre-restore"]  # type: ignore[attr-defined]


def test_entry_point_plugin_disabled_by_env(
    fake_distribution: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(manager.DISABLE_ENV, "fake")
    hooks = manager.plugin_manager()
    assert hooks.plugin_names() == ["macvlan"]
    assert "status-ready" not in hooks.handled_actions()


def test_hook_failures_become_hook_errors(clean_env: None, fake_distribution: str, ctx: ActionContext) -> None:
    hooks = manager.plugin_manager()
    ctx.action = "status-ready"
    with pytest.raises(HookError) as info:
        hooks.run(ctx)
    assert str(info.value) == "status-ready: fake: broken image"
    assert info.value.exit_code == ExitCode.IMAGE
    assert isinstance(info.value.__cause__, ImageError)
    ctx.action = "post-resume"
    with pytest.raises(HookError) as info:
        hooks.run(ctx)
    assert str(info.value) == "post-resume: internal error: KeyError: 'oops'"
    assert info.value.exit_code == ExitCode.BUG


def test_unknown_action_is_ignored(clean_env: None, ctx: ActionContext, caplog: pytest.LogCaptureFixture) -> None:
    ctx.action = "some-future-action"
    with caplog.at_level(logging.DEBUG, logger="criu_macvlan"):
        manager.plugin_manager(entry_points=False).run(ctx)
    assert "ignoring unknown CRIU action 'some-future-action'" in caplog.text


def test_handled_actions_cache(clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    path = Path(manager.actions_cache_path())
    assert path == tmp_path / "prefix" / "share" / "criu-macvlan" / "handled-actions"
    hooks = manager.plugin_manager(entry_points=False)
    manager.write_actions_cache(hooks)
    assert path.read_text() == " ".join(hooks.handled_actions()) + "\n"
    mtime = path.stat().st_mtime_ns
    manager.write_actions_cache(hooks)  # unchanged: not rewritten
    assert path.stat().st_mtime_ns == mtime
    manager.write_actions_cache(manager.plugin_manager(disable=["macvlan"], entry_points=False))
    assert path.stat().st_mtime_ns == mtime  # a run with plugins disabled never writes the shared cache
    path.write_text("pre-dump\n")
    manager.write_actions_cache(hooks)  # changed: rewritten
    assert path.read_text() == " ".join(hooks.handled_actions()) + "\n"
    assert os.listdir(path.parent) == ["handled-actions"]  # no temp file left


def test_handled_actions_cache_read_only_prefix(
    clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(sys, "prefix", str(blocker))  # share/ cannot be made under a file
    manager.write_actions_cache(manager.plugin_manager(entry_points=False))  # best effort: no exception
    assert blocker.read_text() == ""


def test_entry_point_cache_is_per_sys_path(
    tmp_path: Path, fake_distribution: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI and the action script run with different sys.path: each keeps its own cache."""
    import importlib.metadata

    first = manager._entry_points()
    other = tmp_path / "bin"
    other.mkdir()
    monkeypatch.syspath_prepend(str(other))
    assert manager._entry_points() == first
    cache = (tmp_path / "cache" / manager.ENTRY_POINT_CACHE).read_text().splitlines()
    assert len(cache) == 2

    def no_scan(**_: object) -> object:
        raise AssertionError("the cache was not used")

    scan = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points", no_scan)
    assert manager._entry_points() == first  # this sys.path's cache
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(other)])
    assert manager._entry_points() == first  # and the first one's, still there
    assert ("fake", fake_distribution) in first
    monkeypatch.setattr(importlib.metadata, "entry_points", scan)
    for i in range(manager.ENTRY_POINT_CACHE_SIZE + 3):  # bounded: the oldest results go
        monkeypatch.syspath_prepend(str(tmp_path / f"more{i}"))
        (tmp_path / f"more{i}").mkdir()
        manager._entry_points()
    cache = (tmp_path / "cache" / manager.ENTRY_POINT_CACHE).read_text().splitlines()
    assert len(cache) == manager.ENTRY_POINT_CACHE_SIZE


def test_entry_point_cache_unchanged_path_lists_nothing(
    tmp_path: Path, fake_distribution: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While no directory on sys.path changed, the cache is found by their mtimes alone; a damaged file rescans."""
    first = manager._entry_points()
    listed: list[object] = []
    scandir = os.scandir

    def counting_scandir(path: str) -> object:
        listed.append(path)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    assert manager._entry_points() == first
    assert listed == []
    cache = tmp_path / "cache" / manager.ENTRY_POINT_CACHE
    keys = [line.rsplit("\t", 1)[0] for line in cache.read_text().splitlines()]
    cache.write_text("".join(f"{key}\t[(\n" for key in keys))  # the entry points no longer parse
    assert manager._entry_points() == first
    assert listed  # rescanned
    assert ("fake", fake_distribution) in first


def test_entry_point_cache_follows_distributions_only(
    tmp_path: Path, fake_distribution: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files coming and going on sys.path (CRIU's, in its working directory) keep the cache; installs do not."""
    import importlib.metadata

    site = tmp_path / "site"
    first = manager._entry_points()
    scans: list[object] = []
    scan = importlib.metadata.entry_points

    def counting_scan(**kw: object) -> object:
        scans.append(kw)
        return scan(**kw)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.metadata, "entry_points", counting_scan)
    (site / "criu.log").write_text("")  # the directory's mtime changes
    (site / "criu.log").unlink()
    assert manager._entry_points() == first
    assert scans == []
    info = site / "cmv_other-2.0.dist-info"  # a package is installed
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cmv-other\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text(f"[{manager.ENTRY_POINT_GROUP}]\nother = {fake_distribution}\n")
    assert ("other", fake_distribution) in manager._entry_points()
    assert len(scans) == 1
