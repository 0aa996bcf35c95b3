"""Import a package's submodules without running the package's ``__init__``.

pyroute2's and pycriu's ``__init__`` import everything they have (every pyroute2
API; every CRIU image schema): several times the cost of the few submodules we
use, paid by every action CRIU runs. A placeholder package lets the submodules
load alone; it is removed afterwards, so a later ``import pyroute2``/``import
pycriu`` elsewhere in the process still runs the real ``__init__`` (reusing the
submodules already loaded).

:func:`pyroute2_netlink` and :func:`pycriu_schema` load, this way, the parts of
pyroute2 and pycriu criu-macvlan uses; the bench's cold bound loads the libraries
through them too (``benchmarks/bench.py``), so that both pay the same.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import struct
import sys
import types


def import_submodules(package: str, *names: str) -> list[types.ModuleType]:
    """``[package.name for name in names]``, imported without ``package/__init__.py`` when possible."""
    loaded = [m for name in names if (m := sys.modules.get(f"{package}.{name}")) is not None]
    if len(loaded) == len(names):  # the usual case after the first call: no file system lookups
        return loaded
    if package in sys.modules:  # the real package (or a running lean import): nothing to avoid
        return [importlib.import_module(f"{package}.{name}") for name in names]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{package} is not installed")
    placeholder = types.ModuleType(package)
    placeholder.__path__ = list(spec.submodule_search_locations)
    placeholder.__spec__ = spec
    sys.modules[package] = placeholder
    try:
        return [importlib.import_module(f"{package}.{name}") for name in names]
    finally:
        if sys.modules.get(package) is placeholder:
            del sys.modules[package]


def pyroute2_netlink() -> None:
    """Import pyroute2's netlink layer (its socket and link messages) without its package ``__init__``.

    While importing, ``platform`` answers pyroute2.config from ``os.uname()`` and
    ``struct``: its own ``uname()`` runs ``uname -p`` and its ``architecture()``
    runs ``file(1)`` on the interpreter, two processes per cold action.
    """
    saved = platform.uname, platform.machine, platform.architecture
    platform.uname = lambda: (*os.uname(), "")  # type: ignore[assignment,return-value]
    platform.machine = lambda: os.uname().machine
    platform.architecture = lambda *a, **k: (f"{8 * struct.calcsize('P')}bit", "ELF")
    try:
        import_submodules("pyroute2", "netlink.nlsocket", "netlink.rtnl.ifinfmsg")
    finally:
        platform.uname, platform.machine, platform.architecture = saved


def pycriu_schema(name: str) -> types.ModuleType:
    """pycriu's generated module ``name`` (``"netdev_pb2"``) and what it imports, without the rest of pycriu.

    ``import pycriu.images`` loads all of CRIU's schemas. pycriu's generated modules
    import each other as top-level modules from their own directory (pycriu.images
    puts it on ``sys.path`` itself): do the same, and load only this one.
    """
    if name not in sys.modules:
        spec = importlib.util.find_spec("pycriu")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("pycriu is not installed")
        schemas = os.path.join(next(iter(spec.submodule_search_locations)), "images")
        if schemas not in sys.path:
            sys.path.append(schemas)
    return importlib.import_module(name)
