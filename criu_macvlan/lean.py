"""Import a package's submodules without running the package's ``__init__``.

pyroute2's and pycriu's ``__init__`` import everything they have (every pyroute2
API; every CRIU image schema): several times the cost of the few submodules we
use, paid by every action CRIU runs. A placeholder package lets the submodules
load alone; it is removed afterwards, so a later ``import pyroute2``/``import
pycriu`` elsewhere in the process still runs the real ``__init__`` (reusing the
submodules already loaded).
"""

from __future__ import annotations

import importlib
import importlib.util
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
