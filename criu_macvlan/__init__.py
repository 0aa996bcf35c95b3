"""criu-macvlan: checkpoint/restore of process trees whose netns holds macvlan links.

Python API (the RPC driver, :mod:`criu_macvlan.rpc`)::

    import criu_macvlan
    criu_macvlan.dump(pid, "/srv/img", leave_running=False)
    pid = criu_macvlan.restore("/srv/img", {"eth0": "enp3s0"})

This module stays cheap to import (the action script imports the package): the
driver, pycriu and pyroute2 load on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__version__ = "0.1.0"


def dump(pid: int, images_dir: str, **kw: Any) -> None:
    """Dump the tree of ``pid`` via CRIU RPC; ``criu_bin=``/``notify=``/... go to :class:`rpc.Criu`."""
    from .rpc import Criu

    criu = Criu(**{k: kw.pop(k) for k in _DRIVER_ARGS if k in kw})
    criu.dump(pid, images_dir, **kw)


def restore(images_dir: str, mappings: Mapping[str, str] | None = None, **kw: Any) -> int:
    """Restore from ``images_dir`` via CRIU RPC, macvlans onto ``mappings`` ``{IN: OUT}``; the restored pid."""
    from .rpc import Criu

    criu = Criu(**{k: kw.pop(k) for k in _DRIVER_ARGS if k in kw})
    return criu.restore(images_dir, mappings, **kw)


_DRIVER_ARGS = ("criu_bin", "service_socket", "hooks", "notify", "disable", "env")
