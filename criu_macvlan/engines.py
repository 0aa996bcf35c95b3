"""Which config file a container engine handed CRIU over RPC, found from the engine itself.

An engine sends CRIU an RPC ``config_file`` that CRIU reads after all its other
options; scripts are not told its name. The engine is CRIU's parent process (it
runs ``criu swrk``), and its command line, state and bundle tell which file it chose:

* **runc** (``libcontainer``): the annotation ``org.criu.config`` if present (an empty
  value: no file at all), else ``/etc/criu/runc.conf``. At checkpoint the annotation
  is among the labels of ``<root>/<id>/state.json``; at restore that file does not
  exist yet, and runc has moved into the bundle, whose ``config.json`` holds it.
* **crun** (with CRIU >= 4.2): the annotation, else ``/etc/criu/crun.conf`` if it
  exists, else ``/etc/criu/runc.conf``. The annotation is in crun's copy
  ``<root>/<id>/config.json``, else in the bundle named by ``<root>/<id>/status``, else
  in ``--bundle`` or crun's directory (restore).

Any other parent (an unknown RPC client): ``/etc/criu/runc.conf``, as before. A file
named by an annotation must exist; a state or ``config.json`` that is not JSON is an
error naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from .errors import UsageError
from .proc import parent_of, strings

RUNC_CONFIG = "/etc/criu/runc.conf"
CRUN_CONFIG = "/etc/criu/crun.conf"
ANNOTATION = "org.criu.config"
RUNC_ROOT = "/run/runc"
CRUN_ROOT = "/run/crun"
MAX_JSON_BYTES = 16 << 20
_ABSENT = object()


class Engine:  # plain: the cold path defines no dataclass or NamedTuple (tests/test_cold_imports.py)
    """The process that started CRIU: its name (``comm``), command line and directory."""

    __slots__ = ("argv", "cwd", "name", "pid")

    def __init__(self, name: str, pid: int, argv: list[str], cwd: str | None) -> None:
        self.name, self.pid, self.argv, self.cwd = name, pid, argv, cwd

    def __repr__(self) -> str:
        return f"Engine({self.name!r}, pid={self.pid}, cwd={self.cwd!r})"

    @property
    def container_id(self) -> str:
        return self.argv[-1] if len(self.argv) > 1 else ""

    def option(self, names: tuple[str, ...], default: str = "") -> str:
        """The value of ``--name value`` or ``--name=value`` (the last one given)."""
        value = default
        it = iter(self.argv[1:])
        for arg in it:
            flag, eq, attached = arg.partition("=")
            if flag in names:
                value = attached if eq else next(it, default)
        return value


def engine_of(criu_pid: int) -> Engine | None:
    """CRIU's parent process, or None."""
    ppid = parent_of(criu_pid)
    if not ppid:
        return None
    try:
        with open(f"/proc/{ppid}/comm", encoding="utf-8", errors="replace") as f:
            name = f.read().strip()
        argv = strings(ppid, "cmdline")
    except OSError:
        return None
    try:
        cwd: str | None = os.readlink(f"/proc/{ppid}/cwd")
    except OSError:
        cwd = None
    return Engine(name=name, pid=ppid, argv=argv, cwd=cwd)


def read_json(path: str) -> Any | None:
    """A JSON file's content; None if it does not exist; an error naming it if it is not JSON."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_JSON_BYTES:
        raise UsageError(f"{path} is larger than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(data)
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise UsageError(f"{path} is not JSON ({exc})") from exc


def _annotation_of(config: Any, path: str) -> object:
    """The annotation's value in an OCI ``config.json``, or ``_ABSENT``."""
    if not isinstance(config, Mapping):
        raise UsageError(f"{path} is not a JSON object")
    annotations = config.get("annotations") or {}
    if not isinstance(annotations, Mapping):
        raise UsageError(f"{path}: annotations is not a JSON object")
    value = annotations.get(ANNOTATION, _ABSENT)
    return value if value is _ABSENT or isinstance(value, str) else str(value)


def _bundle_annotation(bundle: str) -> tuple[object, str]:
    path = os.path.join(bundle, "config.json")
    config = read_json(path)
    return (_ABSENT if config is None else _annotation_of(config, path)), path


def runc_annotation(engine: Engine) -> tuple[object, str]:
    """``(value or _ABSENT, where it was read)`` for a runc process."""
    root = engine.option(("--root",), RUNC_ROOT)
    state_path = os.path.join(engine.cwd or "/", root, engine.container_id, "state.json")
    state = read_json(state_path)
    if state is not None:  # checkpoint: the labels runc itself reads
        if not isinstance(state, Mapping) or not isinstance(state.get("config"), Mapping):
            raise UsageError(f"{state_path} is not a runc state file")
        for label in state["config"].get("labels") or []:
            key, sep, value = str(label).partition("=")
            if sep and key == ANNOTATION:
                return value, state_path
        return _ABSENT, state_path
    # restore: runc has moved into the bundle (-b) before it starts CRIU
    return _bundle_annotation(engine.cwd or ".")


def crun_annotation(engine: Engine) -> tuple[object, str]:
    """``(value or _ABSENT, where it was read)`` for a crun process."""
    root = engine.option(("--root",), CRUN_ROOT)
    state_dir = os.path.join(engine.cwd or "/", root, engine.container_id)
    if os.path.exists(os.path.join(state_dir, "config.json")):  # crun keeps its own copy there
        return _bundle_annotation(state_dir)
    status_path = os.path.join(state_dir, "status")
    status = read_json(status_path)
    if status is not None:
        if not isinstance(status, Mapping) or not isinstance(status.get("bundle"), str):
            raise UsageError(f"{status_path} is not a crun status file")
        bundle = status["bundle"]
    else:
        bundle = os.path.join(engine.cwd or "/", engine.option(("--bundle", "-b")) or ".")
    return _bundle_annotation(bundle)


def engine_configs(engine: Engine | None) -> list[tuple[str, bool]]:
    """``(path, required)`` of the config files the engine named, in the engine's order."""
    if engine is None or engine.name not in ("runc", "crun"):
        return [(RUNC_CONFIG, False)]
    value, where = runc_annotation(engine) if engine.name == "runc" else crun_annotation(engine)
    if isinstance(value, str):
        if not value:
            return []  # an empty annotation names no file at all
        # CRIU opens it from the directory the engine started it in
        value = os.path.join(engine.cwd or "/", value)
        if not os.path.exists(value):
            raise UsageError(f"{ANNOTATION} in {where} names {value}, which does not exist")
        return [(value, True)]
    if engine.name == "crun" and os.path.exists(CRUN_CONFIG):
        return [(CRUN_CONFIG, True)]
    return [(RUNC_CONFIG, False)]

